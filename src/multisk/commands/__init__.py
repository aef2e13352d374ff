"""Sub-commands of the ``multisk`` CLI (applications; the library never imports these)."""

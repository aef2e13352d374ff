"""``multisk serve``: search one's own collection from a local web page.

A Flask application over one index (:mod:`multisk.evaluate.index`; folder or ``.npz``):

* ``GET /``: the page (``web/page.html``, its CSS and JS served from the package: no CDN, works offline);
* ``GET /api/info``: the index (items, search targets, categories);
* ``GET /api/search?q=TEXT&target=video&top=12``: results as JSON, best first: score, id, caption,
  category, file, the moment (``start``, ``end`` seconds) of a video, media URLs; the calibrated
  low-confidence notice (:func:`multisk.evaluate.search_calibration.confidence_notice`); the words a
  word-vector encoder used; and the closest categories (zero-shot: every category name goes through the
  text branch as a query does, and is ranked by cosine with the mean of the top results' embeddings);
* ``GET /media/ROOT/PATH``: a file of the collection (``ROOT``: the number of the indexed root), only if
  the index lists it.

Files are served from the indexed roots only (:func:`safe_media_path`): the collection folder of a
``multisk embed --folder`` index (or ``--media-root``), the folders of the pictures of a store index.
A path with ``..``, an absolute path, a backslash, or one whose resolved location leaves the root (a
symlink pointing out) is refused with 403; a file the index does not list gets 404, whatever it is. The
server binds 127.0.0.1 unless told otherwise: the collection is private.
"""

from __future__ import annotations

import threading
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import quote

import torch

from multisk.errors import DataFormatError, UserFacingError
from multisk.evaluate.ann import DEFAULT_NPROBE
from multisk.evaluate.index import ANY_TARGET, IndexSearcher, load_index, target_embeddings
from multisk.evaluate.search_calibration import confidence_notice, search_targets
from multisk.evaluate.text_queries import embed_texts, query_words

WEB_DIR = Path(__file__).resolve().parent / "web"
MAX_TOP = 100
CATEGORY_RESULTS = 10  # results whose mean embedding is classified into the categories


class MediaRefused(Exception):
    """A media path that could leave the indexed roots (HTTP 403)."""


def safe_media_path(root: Path, relative: str) -> Path:
    """``root / relative`` resolved, or :class:`MediaRefused` when ``relative`` is absolute, has a ``..``,
    ``.`` or empty segment, a backslash or NUL, or resolves (symlinks followed) outside ``root``;
    FileNotFoundError if missing."""
    if not relative or "\\" in relative or "\x00" in relative or relative.startswith("/"):
        raise MediaRefused(f"{relative!r}: not a relative path inside the collection")
    if any(part in ("..", ".", "") for part in relative.split("/")) or PurePosixPath(relative).is_absolute():
        raise MediaRefused(f"{relative!r}: '..', '.' and empty segments are not allowed in a media path")
    base = root.resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        raise MediaRefused(f"{relative!r}: resolves outside the collection (a symlink pointing out?)")
    if not target.is_file():
        raise FileNotFoundError(relative)
    return target


MediaFiles = List[Dict[str, Tuple[int, str]]]  # per item: {kind: (root number, path relative to that root)}


def media_roots(index: Mapping[str, Any], media_root: Optional[str | Path] = None) -> Tuple[List[Path], MediaFiles]:
    """``(roots, per item {kind: (root number, relative path)})`` of an index's media files."""
    meta = index["meta"]
    collection = meta.get("collection")
    if collection or media_root is not None:
        root = Path(media_root if media_root is not None else collection["root"])
        media = [{kind: (0, rel) for kind, rel in (item.get("media") or {}).items()} for item in meta["items"]]
        if media_root is not None and not collection:  # a store index: its pictures' paths under the given root
            media = [_under(root, item.get("path")) for item in meta["items"]]
        return [root], media
    roots: Dict[Path, int] = {}
    media = []
    for item in meta["items"]:
        if item.get("path"):
            path = Path(item["path"])
            number = roots.setdefault(path.parent, len(roots))
            media.append({"image": (number, path.name)})
        else:
            media.append({})
    return list(roots), media


def _under(root: Path, path: Optional[str]) -> Dict[str, Tuple[int, str]]:
    if not path:
        return {}
    try:
        return {"image": (0, Path(path).resolve().relative_to(root.resolve()).as_posix())}
    except ValueError:
        return {"image": (0, Path(path).name)}


class SearchService:
    """The index, its model and the media it may serve; thread-safe ``search``."""

    def __init__(self, index_path: str | Path, *, device: str | torch.device = "cpu", media_root=None,
                 checkpoint=None, word_vectors=None, exact_limit: Optional[int] = None,
                 nprobe: int = DEFAULT_NPROBE) -> None:
        self.index = load_index(index_path)
        self.searcher = IndexSearcher(self.index, device=device, checkpoint=checkpoint, word_vectors=word_vectors,
                                      exact_limit=exact_limit, nprobe=nprobe)
        self.word_vectors = word_vectors
        self.roots, self.media = media_roots(self.index, media_root)
        self.allowed = {(number, rel) for files in self.media for number, rel in files.values()}
        targets = [t for t in search_targets(list(self.index["joint"])) if self._has(t)]
        self.targets = sorted(targets, key=lambda t: t != ANY_TARGET)  # everything first, when there is a choice
        items = self.index["meta"]["items"]
        self.categories = sorted({item.get("category") for item in items if item.get("category")})
        self.row_of = {item["id"]: n for n, item in enumerate(items)}
        self._target_rows: Dict[str, torch.Tensor] = {}
        self._category_embeddings: Optional[Tuple[List[str], torch.Tensor]] = None
        self.lock = threading.Lock()

    def _has(self, target: str) -> bool:
        try:
            self.searcher.gallery(target)
            return True
        except DataFormatError:
            return False

    def info(self) -> Dict[str, Any]:
        meta = self.index["meta"]
        return {"index": str(self.index["path"]), "items": len(meta["items"]), "targets": self.targets,
                "categories": self.categories, "clip_seconds": (meta.get("collection") or {}).get("clip_seconds")}

    def media_url(self, number: int, rel: str) -> str:
        return f"/media/{number}/{quote(rel)}"

    def file(self, number: int, rel: str) -> Path:
        """The file behind ``/media/NUMBER/REL`` (MediaRefused, FileNotFoundError: see the module docstring)."""
        if not 0 <= number < len(self.roots):
            raise FileNotFoundError(rel)
        path = safe_media_path(self.roots[number], rel)
        if (number, rel) not in self.allowed:
            raise FileNotFoundError(rel)
        return path

    def _category_scores(self, rows: List[int], target: str) -> List[Dict[str, Any]]:
        if not self.categories or not rows:
            return []
        if self._category_embeddings is None:
            names = [c.replace("/", " ").replace("_", " ").replace("-", " ") for c in self.categories]
            emb, has = embed_texts(self.searcher.model, names, self.searcher.spec, device=self.searcher.device,
                                   word_vectors=self.word_vectors)
            self._category_embeddings = ([c for c, ok in zip(self.categories, has.tolist()) if ok], emb[has])
        names, emb = self._category_embeddings
        if not names:
            return []
        if target not in self._target_rows:
            self._target_rows[target] = target_embeddings(self.index, target)[0]
        rows_emb = self._target_rows[target][rows]
        centre = torch.nn.functional.normalize(rows_emb.mean(dim=0), dim=0)
        scores = emb @ centre
        order = torch.argsort(scores, descending=True).tolist()[:3]
        return [{"name": names[i], "score": round(float(scores[i]), 4)} for i in order]

    def search(self, query: str, target: str, top: int) -> Dict[str, Any]:
        if target not in self.targets:
            raise DataFormatError(f"target {target!r}: this index can search {', '.join(self.targets)}")
        top = max(1, min(int(top), MAX_TOP))
        with self.lock:
            hits = self.searcher.search(query, target=target, top=top)
            rows = [self.row_of[hit["id"]] for hit in hits]
            categories = self._category_scores(rows[:CATEGORY_RESULTS], target)
            words = None
            if self.searcher.spec.get("kind", "word_vectors") == "word_vectors":
                words = query_words(self.searcher.spec, query, word_vectors=self.word_vectors)
        notice = confidence_notice(self.index["meta"], target, hits[0]["score"]) if hits else None
        results = []
        for rank, (hit, row) in enumerate(zip(hits, rows), 1):
            result = {"rank": rank, **{k: v for k, v in hit.items() if k not in ("source", "path", "media")}}
            result["media"] = {kind: self.media_url(*where) for kind, where in self.media[row].items()}
            results.append(result)
        return {"query": query, "target": target, "results": results, "notice": notice,
                "low_confidence": bool(notice and notice.startswith("low confidence")),
                "words": {"used": words[0], "unknown": words[1]} if words else None, "categories": categories}


def create_app(service: SearchService):
    """The Flask application of a :class:`SearchService` (module docstring)."""
    from flask import Flask, jsonify, request, send_file

    app = Flask("multisk.serve", static_folder=str(WEB_DIR), static_url_path="/static")
    app.url_map.merge_slashes = False  # an absolute media path stays absolute, and is refused

    @app.get("/")
    def page():
        return send_file(WEB_DIR / "page.html", mimetype="text/html", max_age=0)

    @app.get("/api/info")
    def info():
        return jsonify(service.info())

    @app.get("/api/search")
    def search():
        query = request.args.get("q", "")
        target = request.args.get("target") or service.targets[0]
        try:
            return jsonify(service.search(query, target, int(request.args.get("top", 12))))
        except (*UserFacingError, ValueError) as err:
            return jsonify({"error": str(err)}), 400

    @app.get("/media/<path:where>")
    def media(where: str):
        number, _, relative = where.partition("/")
        try:
            if not number.isdigit():  # e.g. /media/../../etc/passwd sent verbatim
                safe_media_path(Path("/nonexistent-root"), where)
                raise FileNotFoundError(where)
            path = service.file(int(number), relative)
        except MediaRefused as err:
            return jsonify({"error": f"refused: {err}"}), 403
        except FileNotFoundError:
            return jsonify({"error": f"{where!r}: not a file of this index"}), 404
        return send_file(path, conditional=True, max_age=3600)

    return app


def make_server(service: SearchService, host: str = "127.0.0.1", port: int = 0):
    """A threaded Werkzeug server for the app (``port`` 0: a free one); ``server.port`` says which."""
    from werkzeug.serving import make_server as werkzeug_server

    return werkzeug_server(host, port, create_app(service), threaded=True)


__all__ = ["MediaRefused", "SearchService", "create_app", "make_server", "media_roots", "safe_media_path"]

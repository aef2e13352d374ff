"""multisk.data.formats — dataset files turned into feature stores: the field's formats (``howto100m``,
``eval_pickles``, ``convert``, sharing ``arrays``) and the optional media pipeline
(``clipart``, ``folder``)."""

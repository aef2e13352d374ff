"""``multisk serve``: a local web page to search an index (multisk.evaluate.serve)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="search an index from a local web page (pictures, sounds, video moments)")
    p.add_argument("--index", required=True, help="index folder (or .npz) written by `multisk embed`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; the collection is private)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    p.add_argument("--media-root", default=None,
                   help="the collection's folder, if it moved since `multisk embed` (files are served from it only)")
    p.add_argument("--checkpoint", default=None, help="the index's checkpoint, if it is not found where recorded")
    p.add_argument("--word-vectors", default=None, help="the word-vector file, if it is not where recorded")
    p.add_argument("--exact-limit", type=int, default=None,
                   help="search exactly up to this many items, approximately (faiss) beyond (default 100000)")
    p.add_argument("--nprobe", type=int, default=32,
                   help="approximate search: index cells scanned per query (more: better recall, slower; default 32)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from multisk.evaluate.serve import SearchService, make_server
    from multisk.device import pick_device

    service = SearchService(args.index, device=pick_device(args.device), media_root=args.media_root,
                            checkpoint=args.checkpoint, word_vectors=args.word_vectors, exact_limit=args.exact_limit,
                            nprobe=args.nprobe)
    server = make_server(service, args.host, args.port)
    info = service.info()
    print(f"searching {info['items']} items of {info['index']} at http://{args.host}:{server.port}/ "
          f"(Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0

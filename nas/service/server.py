"""``nas serve``: the token, the address checks, then uvicorn."""

from __future__ import annotations

import argparse

from nas.errors import NasError
from nas.service.auth import load_token
from nas.store import resolve_url


def serve(args: argparse.Namespace) -> int:
    """Run the service until interrupted; a bad token, address or database fails first."""
    import uvicorn

    from nas.service.app import create_app

    token, generated = load_token(args.token_file, args.host)
    if not 0 < args.port < 65536:
        raise NasError(f"--port {args.port}: expected 1 to 65535")
    app = create_app(
        resolve_url(args.db),
        token,
        allowed_modules=args.allow_module or (),
        ray_address=args.address,
        artifacts=args.artifacts,
    )
    url = f"http://{args.host}:{args.port}/"
    if generated:
        print(f"nas serve: no token configured; this run's token is {token}", flush=True)
        print(f"nas serve: open {url}#token={token}", flush=True)
    else:
        print(f"nas serve: open {url} (the page asks for the token)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0

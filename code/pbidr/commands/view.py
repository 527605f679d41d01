"""``pbidr view``: a local web page showing a run, an eval, a batch or a mesh under a raking light the
user moves (:mod:`pbidr.view`; the optional extra ``pip install -e .[view]``)."""

from __future__ import annotations

import argparse
import signal
import socket
import threading

from pbidr.commands.args import nonneg_int, positive_int
from pbidr.errors import PbidrError

# pbidr.view (numpy, trimesh, viser) is imported when the command runs: `pbidr --help` needs only the
# flags. The face budget is repeated here for the same reason; test_view checks it is display's.
DEFAULT_MAX_FACES = 1_000_000


def add_view_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "view", help="look at a run, an eval, a batch or a mesh in the browser under a moving raking light",
        description="Serve a local web page (viser) showing the coarse mesh, the detailed meshes (coarse topology "
                    "and dense) and the sample's truth where there is one, side by side or overlaid; textured, clay "
                    "or coloured by displacement (mm); under one raking light whose azimuth and elevation the page "
                    "sets; with the run's metrics. Prints the page's URL and serves until Ctrl-C. Needs the optional "
                    "extra: pip install -e .[view].")
    p.add_argument("--input", "-i", required=True, metavar="PATH",
                   help="a run of pbidr train with its eval, an eval folder, a pbidr batch output (a subject picker), "
                        "a folder written by pbidr.recover, or a mesh file (.obj, .ply, .glb, .gltf) or a folder "
                        "holding mesh.*, shown alone")
    p.add_argument("--port", type=port_arg, default=8080,
                   help="port to serve on (default 8080; the next free one when it is taken; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens the page to "
                        "the network)")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")
    p.add_argument("--max-faces", type=positive_int, default=DEFAULT_MAX_FACES, metavar="N",
                   help="meshes with more triangles are decimated for display to N, and the page says so "
                        f"(default {DEFAULT_MAX_FACES:,})")
    p.set_defaults(func=cmd_view)
    return p


def port_arg(text: str) -> int:
    value = nonneg_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {text}")
    return value


def check_host(host: str) -> None:
    """The server can listen on ``host`` (viser would otherwise try port after port on it, for ever)."""
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.bind(infos[0][4])
    except (OSError, UnicodeError) as exc:
        raise PbidrError(f"--host {host}: cannot listen on it ({exc.__class__.__name__}: "
                         f"{getattr(exc, 'strerror', None) or exc}); use 127.0.0.1, or 0.0.0.0 for every "
                         "network interface") from None


def cmd_view(args: argparse.Namespace) -> int:
    from pbidr.view.page import ViewerPage, import_viser, start_server, stop_server
    from pbidr.view.sources import describe, resolve_source

    source = resolve_source(args.input)  # a bad path fails before a server starts
    check_host(args.host)
    import_viser()
    server = start_server(args.host, args.port)
    url = f"http://{'localhost' if args.host in ('0.0.0.0', '::') else args.host}:{server.get_port()}"
    print(f"pbidr view: {describe(source)}", flush=True)
    if args.port and server.get_port() != args.port:
        print(f"pbidr view: note: port {args.port} is taken; serving on {server.get_port()}", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"pbidr view: note: listening on {args.host}: other machines can open the page", flush=True)
    print(f"pbidr view: serving {url} (Ctrl-C to stop)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    try:
        page = ViewerPage(server, source, max_faces=args.max_faces, log=lambda line: print(line, flush=True))
        page.show_subject(0)
        _wait_for_stop()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(server)
    print("pbidr view: stopped", flush=True)
    return 0


def _wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM (a service manager's stop), both ending the command cleanly."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)


#!/usr/bin/python3
"""A real RTSP server (GStreamer's, from Debian packages) serving an H.264 mp4 in a loop on
127.0.0.1. Run with Debian's /usr/bin/python3 (python3-gi is built for it):

    /usr/bin/python3 tests/rtsp_server.py PORT CLIP.mp4 [MOUNT]

Prints "ready" once it listens.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, clip = sys.argv[1], sys.argv[2]
    mount = sys.argv[3] if len(sys.argv) > 3 else "/cam"
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( filesrc location={clip} ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 "
        "config-interval=1 )"
    )
    factory.set_shared(True)
    factory.set_eos_shutdown(False)
    server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        print("could not bind", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()

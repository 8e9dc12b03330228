import sys

from stream_server.shell.cli import main

sys.exit(main())

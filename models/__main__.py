import sys

from models.train import main

sys.exit(main())

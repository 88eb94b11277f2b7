import sys

from lodestar_cli.main import main

sys.exit(main())

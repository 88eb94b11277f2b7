import sys

from services.gateway.app import DEFINITION
from services.platform.server import main

sys.exit(main(DEFINITION))

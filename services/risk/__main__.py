import sys

from services.platform.server import main
from services.risk.app import DEFINITION

sys.exit(main(DEFINITION))

import sys

from services.platform.server import main
from services.profile.app import DEFINITION

sys.exit(main(DEFINITION))

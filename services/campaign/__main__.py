import sys

from services.campaign.app import DEFINITION
from services.platform.server import main

sys.exit(main(DEFINITION))

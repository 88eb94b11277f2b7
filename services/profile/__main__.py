import sys

from services.platform.server import main
from services.profile.app import DEFINITION

if len(sys.argv) > 1 and sys.argv[1] == "rotate-keys":
    from services.profile.pii import rotate_keys_main

    sys.exit(rotate_keys_main(DEFINITION, sys.argv[2:]))
sys.exit(main(DEFINITION))

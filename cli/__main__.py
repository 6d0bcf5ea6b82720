import sys

from wholecall.cli.main import main

sys.exit(main())

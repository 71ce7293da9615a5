import sys

from mixshare.cli import main

sys.exit(main())

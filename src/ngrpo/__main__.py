import sys

from ngrpo.cli import main

sys.exit(main())

"""`python -m ngrpo.cli`: the same as the `ngrpo` command."""

import sys

from ngrpo.cli import main

sys.exit(main())

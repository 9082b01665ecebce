"""`python3 -m nydus_py.cli`: the `nydus-py` command."""

import sys

from nydus_py.cli.main import main

sys.exit(main())

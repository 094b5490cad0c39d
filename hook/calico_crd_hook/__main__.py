import sys

from calico_crd_hook.cli import main

sys.exit(main())

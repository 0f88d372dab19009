"""`python -m spin_cluster.kubelet STATE_DIR`."""

import sys

from spin_cluster.kubelet.main import main

sys.exit(main())

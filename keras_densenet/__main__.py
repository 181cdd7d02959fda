"""``python -m keras_densenet``: the ``keras-densenet`` command."""

import sys

from keras_densenet.cli import main

sys.exit(main())

"""Stand-in for pypa's get-pip.py, which ansible-test downloads from a host these machines cannot reach.

ansible-test runs this file as __main__ inside each fresh sanity virtualenv with pip's install arguments.
It bootstraps pip from the interpreter's own ensurepip and then installs what was asked from the package index.
"""
import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", *args])

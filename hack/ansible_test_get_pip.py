# -*- coding: utf-8 -*-
# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stand-in for ansible-test's get-pip bootstrap script.

ansible-test bootstraps pip into each sanity virtualenv with a get-pip.py that it
downloads from its own CI file host, which a machine that reaches only the package
index cannot fetch. This does the same job with the standard library's ensurepip and
then installs the exact packages ansible-test asked for (pip==X...) from the index.
hack/sanity.sh puts it where ansible-test looks for its cached copy.
"""

import subprocess
import sys

# In a child process: ensurepip points PIP_CONFIG_FILE at /dev/null in its own
# environment, which would hide the machine's pip configuration from the install below.
subprocess.check_call([sys.executable, '-m', 'ensurepip', '--upgrade'], stdout=subprocess.DEVNULL)
args = [arg for arg in sys.argv[1:] if arg not in ('--no-setuptools', '--no-wheel')]
subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q'] + args)

#!/usr/bin/python3
"""Run cloud-init's scripts-per-boot module, as the final stage of every boot does.

cloud-init's own module and its runparts run every executable file in
CLOUD_DIR/scripts/per-boot (CLOUD_DIR stands for /var/lib/cloud), with this
process's environment. The scripts' output goes to this process's stdout and
stderr (on a node: /var/log/cloud-init-output.log); cloud-init's own warnings
(on a node: /var/log/cloud-init.log) go to stderr. Exits 1 when the module
fails, as the boot stage then does.

Run with Debian's /usr/bin/python3, the interpreter cloud-init itself uses.
"""
import inspect
import logging
import sys

from cloudinit.config import cc_scripts_per_boot


class Cloud:
    def __init__(self, cloud_dir):
        self.cloud_dir = cloud_dir

    def get_cpath(self, name=None):
        return self.cloud_dir


logging.basicConfig(
    stream=sys.stderr, level=logging.WARNING, format="cloud-init %(levelname)s: %(message)s"
)
args = ["scripts_per_boot", {}, Cloud(sys.argv[1])]
if "log" in inspect.signature(cc_scripts_per_boot.handle).parameters:
    args.append(logging.getLogger("cloudinit"))
args.append([])
try:
    cc_scripts_per_boot.handle(*args)
except Exception as e:  # what cloud-init records for the stage
    print(f"cloud-init ERROR: module scripts_per_boot failed: {e}", file=sys.stderr)
    sys.exit(1)

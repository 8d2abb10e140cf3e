#!/usr/bin/python3
"""Feed a user-data file to cloud-init's own code, as a booting node would.

cloud-init's UserDataProcessor (gzip detection, part handling), its YAML loader
and its write_files module write every file under ROOT instead of /. Ownership
is recorded instead of applied, so this runs without root. Prints JSON:
{"files": {path: [mode, owner, sha256, size]}, "runcmd": [...], "bootcmd": [...]}.

Run with Debian's /usr/bin/python3, the interpreter cloud-init itself uses.
"""
import hashlib
import json
import os
import sys

from cloudinit import helpers, user_data, util
from cloudinit.config import cc_write_files

user_data_path, root = sys.argv[1], sys.argv[2]
raw = open(user_data_path, "rb").read()
message = user_data.UserDataProcessor(helpers.Paths({})).process(raw)
configs = [
    util.load_yaml(part.get_payload(decode=True))
    for part in message.walk()
    if part.get_content_type() == "text/cloud-config"
]
if len(configs) != 1:
    sys.exit(f"expected one cloud-config part, found {len(configs)}")
cfg = configs[0]

owners = {}
util.chownbyname = lambda path, user, group: owners.__setitem__(path, f"{user}:{group}")
files = [dict(f, path=root + f["path"]) for f in cfg.get("write_files", [])]
cc_write_files.write_files("write_files", files, "root:root")

out = {}
for f in files:
    path = f["path"]
    st = os.stat(path)
    data = open(path, "rb").read()
    out[path[len(root):]] = [
        "%04o" % (st.st_mode & 0o7777),
        owners.get(path, "?"),
        hashlib.sha256(data).hexdigest(),
        len(data),
    ]
print(json.dumps({"files": out, "runcmd": cfg.get("runcmd", []), "bootcmd": cfg.get("bootcmd", [])}))

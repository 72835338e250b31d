# Documentation stub: the work is done on the controller by the action plugin of the same name
# (plugins/action/mayday_evidence_custody.py); this file lets `ansible-doc` find it.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_evidence_custody
short_description: Verify a fetched evidence capture on the controller and write its custody record
description:
  - In I(dir) (the host's evidence directory on the controller, holding evidence.tar.gz and
    manifest.json) sets the directory to 0700 and the files to 0600, re-hashes the archive against
    the sha256 the host reported and the manifest, and every member against the manifest.
  - Then writes custody.json (0600) - operator, controller, time received (UTC), host, incident,
    archive and manifest sha256, the host-side source. An existing custody.json is never replaced.
  - Fails, writing no custody record, when the copy does not verify.
options:
  dir: {description: The capture directory on the controller., type: path, required: true}
  incident: {description: The incident id., type: str, required: true}
  host: {description: The host the evidence was taken on (inventory_hostname)., type: str, required: true}
  sha256: {description: The archive's sha256 as the host computed it., type: str, required: true}
  source: {description: "Where it came from on the host (path, run_dir), for the record.", type: dict}
author: mayday
"""

EXAMPLES = r"""
# See roles/evidence.
"""

RETURN = r"""
custody: {description: The custody record written., type: dict, returned: success}
custody_path: {description: Path of custody.json., type: str, returned: success}
"""

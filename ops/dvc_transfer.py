"""``dvc push`` / ``dvc pull`` that first forget what an earlier, killed transfer collected.

Run by :func:`ops.versioning.push` and :func:`ops.versioning.pull` with DVC's own interpreter
(``.venv-dvc``): it imports DVC, never the project.

Why: DVC (3.67.1, dvc-data 3.18.3) caches the list of objects a push or fetch has to transfer
in its site cache, under a key made of the data's hashes, and commits that list output by
output. A transfer killed between two outputs' commits leaves a list that names only the first;
the next transfer finds the key, trusts the list and skips every other output, then prints
``N files pushed`` or ``Everything is up to date`` and exits 0, while the remote lacks them (seen
in the fault campaign: the data directory missing after a re-run of a killed push). DVC drops
that cache itself after every transfer that moved something, so dropping it first costs only
re-listing the outputs; it is done under DVC's repository lock, as DVC's own commands do.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from dvc.cli import main as dvc_main
    from dvc.repo import Repo, lock_repo

    with Repo() as repo, lock_repo(repo):
        repo.drop_data_index()
    return dvc_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

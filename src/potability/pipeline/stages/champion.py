"""Stage champion: the served version the decision is measured against, as a tracked input of promote.

The alias ``champion`` lives outside the pipeline, so this stage always runs
(``always_changed``, like export) and writes ``models/champion/``: the
version's checked files and ``champion.json`` naming it (``registry_version``
null before the first deploy). Byte-identical files when the alias has not
moved, so promote does not rerun for nothing; and ``dvc.lock`` records which
champion a decision was made against, so a rebuild from git + the DVC remote
(`potability reproduce`) uses that one, not today's.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from potability import artifacts, tracking
from potability.config import Settings, get_settings

log = logging.getLogger(__name__)


def fetch_champion(settings: Settings, out: Path) -> str | None:
    """Write the version the alias names into ``out`` (files checked) and ``champion.json``; return its number."""
    tracking.configure(settings)
    found = tracking.version_for_alias(settings.registered_model, settings.champion_alias)
    if found is None:
        log.info(
            "no %s@%s yet: the best eligible challenger becomes the first champion",
            settings.registered_model,
            settings.champion_alias,
        )
        out.mkdir(parents=True, exist_ok=True)
        for name in (artifacts.MODEL_FILE, artifacts.META_FILE, artifacts.HISTORY_FILE):
            (out / name).unlink(missing_ok=True)
    else:
        try:
            tracking.fetch_version(found, out)
        except artifacts.UnsealedVersion as exc:
            # registered before manifests: no server serves it any more (they refuse it too), so
            # judging against it is moot; deploying the challenger needs `potability deploy --force`
            log.warning("%s; judging the challengers as if there were no champion", exc)
            found = None
            for name in artifacts.SERVED_FILES:
                (out / name).unlink(missing_ok=True)
    artifacts.write_json_atomic(
        out / artifacts.CHAMPION_FILE,
        {
            "registered_model": settings.registered_model,
            "alias": settings.champion_alias,
            "registry_version": found.version if found else None,
            "model_version": found.model_version if found else None,
        },
    )
    return found.version if found else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    version = fetch_champion(get_settings(), args.out)
    print(f"champion: version {version}" if version else "champion: none yet")


if __name__ == "__main__":
    main()

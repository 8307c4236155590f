"""DVC stages: one module each, a pure function plus a ``main()`` mirroring its ``cmd`` in dvc.yaml."""

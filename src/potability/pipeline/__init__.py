"""The research pipeline: the stages `dvc.yaml` runs, the model zoo, the promotion rule."""

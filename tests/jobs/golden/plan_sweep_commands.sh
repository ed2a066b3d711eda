# hirl local backend: experiment sweep, cell cdf384248e89
# matrix point: method=row_b seed=1
# run from the repo root, one stage after another; each also gets MLFLOW_TRACKING_URI

# pretrain (pretrain), after: -
MLFLOW_RUN_ID='<run-id>' HIRL_STAGE=pretrain HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 python -m hirl_core pretrain -c 'outputs/sweep/cdf384248e89/pretrain-<run-id>/config.yaml'
# knn (knn), after: pretrain
MLFLOW_RUN_ID='<run-id>' HIRL_STAGE=knn HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 python -m hirl_core knn -c 'outputs/sweep/cdf384248e89/knn-<run-id>/config.yaml'

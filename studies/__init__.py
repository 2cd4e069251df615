"""Studies and measurements of the harness, kept apart from the product (`benchmark`, `attacks`, `defenses`).

- `studies.scale`: the scale study's report (does a mask defense's effect depend on the model's size?);
- `studies.perf`: the performance benchmark, with the reference RNP's loop and the targets it is compared to;
- `studies.gpu_check`: the GPU path in one command (a stand-in data set, a sweep of every defense, perf);
- `studies/conf/`: their Hydra presets (`experiment=scale_study`, `proxy`, `proxy_premise`, `gpu_check`),
  found through the search path that `conf/config.yaml` names (`pkg://studies.conf`).

Studies import the product; the product never imports studies (tests/e2e/test_layout.py). Their results and the
machines they were measured on are in docs/.
"""

"""Serving a trained router, Ray-free: the OpenAI chat wire format (`openai_api`: every field
honoured or refused, responses as the openai SDK's types), the request logic (`service`: checks,
prompt, episode, forced answer, fallback, accounting), batched turn generation (`generation`),
the policy's engine (`engines`), the Python API (`router`: `Router.load(dir, pool=...)`) and the
MLflow pyfunc model (`mlflow_model`). The Ray Serve app (deployments/router.py) is a thin shell
over `service`."""

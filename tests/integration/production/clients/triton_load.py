"""tritonclient.grpc load_model with a config override (run with .venv-triton's python).

usage: triton_load.py GRPC_HOST:PORT
"""

import json
import sys

import tritonclient.grpc as grpcclient


def main() -> None:
    client = grpcclient.InferenceServerClient(sys.argv[1])
    client.load_model("tiny", config=json.dumps({"instances": 2}))
    assert client.is_model_ready("tiny")
    print("ok")


if __name__ == "__main__":
    main()

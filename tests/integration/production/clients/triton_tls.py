"""tritonclient over HTTPS and gRPC with TLS (run with .venv-triton's python).

usage: triton_tls.py HTTP_HOST:PORT GRPC_HOST:PORT CA_PEM API_KEY
Prints one line per protocol with the output, then "ok".
"""

import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def main() -> None:
    http_url, grpc_url, ca, key = sys.argv[1:5]
    headers = {"Authorization": f"Bearer {key}"}
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    n = np.ones((2, 3), dtype=np.int64)

    http = httpclient.InferenceServerClient(http_url, ssl=True, ssl_options={"ca_certs": ca})
    assert http.is_server_live()
    inputs = [httpclient.InferInput("x", [2, 4], "FP32"), httpclient.InferInput("n", [2, 3], "INT64")]
    inputs[0].set_data_from_numpy(x, binary_data=True)
    inputs[1].set_data_from_numpy(n, binary_data=True)
    result = http.infer("tiny", inputs, headers=headers)
    assert np.array_equal(result.as_numpy("y"), x + 1), result.as_numpy("y")
    print("https", result.as_numpy("y").ravel().tolist())

    grpc = grpcclient.InferenceServerClient(grpc_url, ssl=True, root_certificates=ca)
    assert grpc.is_server_live()
    inputs = [grpcclient.InferInput("x", [2, 4], "FP32"), grpcclient.InferInput("n", [2, 3], "INT64")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(n)
    result = grpc.infer("tiny", inputs, headers={"authorization": f"Bearer {key}"})
    assert np.array_equal(result.as_numpy("m"), n * 2), result.as_numpy("m")
    print("grpc+tls", result.as_numpy("m").ravel().tolist())
    print("ok")


if __name__ == "__main__":
    main()

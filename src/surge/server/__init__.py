"""The serving front end: V2 HTTP (ASGI) and gRPC servers, the engine behind them, `surge serve`."""

// Node.js: native gRPC over HTTP/2 to the server's gRPC port (Connect's gRPC transport for Node).
import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { NatterClient } from "./client.js";
import { Connection, type ConnectionOptions } from "./connection.js";
import { grpcStream } from "./grpc.js";

/** A gRPC transport to `address` (host:port), plaintext unless `tls`. */
export function grpcTransport(address: string, options: { tls?: boolean; timeoutMs?: number } = {}): Transport {
  const scheme = options.tls ? "https" : "http";
  return createGrpcTransport({ baseUrl: `${scheme}://${address}`, defaultTimeoutMs: options.timeoutMs });
}

/** A client for the natter server whose gRPC listener is `address` (host:port). */
export function nodeClient(address: string, options: { token?: string; tls?: boolean; timeoutMs?: number } = {}): NatterClient {
  return new NatterClient(grpcTransport(address, { tls: options.tls, timeoutMs: options.timeoutMs ?? 15_000 }), {
    token: options.token,
  });
}

/**
 * A connection over a gRPC stream to the client's server, or to the socket server a Redirect or
 * Locate names (one HTTP/2 session per address, reused).
 */
export function nodeConnection(
  client: NatterClient,
  options: Omit<ConnectionOptions, "client" | "stream"> & { tls?: boolean } = {},
): Connection {
  const { tls, ...rest } = options;
  const transports = new Map<string, Transport>();
  const streamTransport = (address: string | undefined): Transport => {
    if (address === undefined) return client.transport;
    let t = transports.get(address);
    if (!t) transports.set(address, (t = grpcTransport(address, { tls })));
    return t;
  };
  return new Connection({ ...rest, client, stream: grpcStream(streamTransport) });
}

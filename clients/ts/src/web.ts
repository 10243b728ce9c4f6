// Browsers (and React Native): unary calls through the server's Connect gateway, the stream over /ws.
import { createConnectTransport } from "@connectrpc/connect-web";
import { NatterClient } from "./client.js";
import { Connection, type ConnectionOptions } from "./connection.js";
import { socketUrl, webSocketStream, type WebSocketLike } from "./websocket.js";

/**
 * A client for the natter server at `baseUrl`, its HTTP listener (`http://host:7080`): the
 * Connect gateway in binary protobuf for calls.
 */
export function webClient(baseUrl: string, options: { token?: string; timeoutMs?: number } = {}): NatterClient {
  const transport = createConnectTransport({ baseUrl, useBinaryFormat: true, defaultTimeoutMs: options.timeoutMs ?? 15_000 });
  return new NatterClient(transport, { token: options.token });
}

/** A connection over the server's WebSocket (`/ws` of `baseUrl`). */
export function webConnection(
  client: NatterClient,
  baseUrl: string,
  options: Omit<ConnectionOptions, "client" | "stream"> & { WebSocket?: WebSocketLike } = {},
): Connection {
  const { WebSocket, ...rest } = options;
  return new Connection({ ...rest, client, stream: webSocketStream(socketUrl(baseUrl), WebSocket) });
}

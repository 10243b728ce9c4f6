// The device stream over a WebSocket (/ws): browsers and React Native; frames are binary protobuf.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code } from "./errors.js";
import { ClientFrameSchema, ServerFrameSchema, type ClientFrame, type ServerFrame } from "./gen/natter/v1/socket_service_pb.js";
import type { DeviceStream, StreamEnd, StreamHandlers, StreamTransport } from "./stream.js";

export const PROTOCOL = "natter.v1";
export const TOKEN_PREFIX = "natter.bearer.";

/** The WebSocket URL of an HTTP base URL: `http://host:7080` → `ws://host:7080/ws`. */
export function socketUrl(base: string): string {
  const u = new URL("/ws", base);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.toString();
}

/** The WebSocket constructor to use: the global one (browsers, React Native, Node 22+) by default. */
export type WebSocketLike = new (url: string, protocols: string[]) => WebSocket;

/** How the server's close codes read as a stream end (4000 + google.rpc code, RFC 6455 codes). */
export function endOfClose(code: number, text: string): StreamEnd {
  const colon = text.indexOf(":");
  const reason = colon > 0 && /^[A-Z_]+$/.test(text.slice(0, colon)) ? text.slice(0, colon) : "";
  const message = colon > 0 && reason ? text.slice(colon + 1).trim() : text;
  if (code >= 4000 && code <= 4016) return { code: code - 4000, reason, message };
  if (code === 1000) return { code: Code.OK, reason, message: message || "closed" };
  if (code === 1003 || code === 1007 || code === 1008 || code === 1009) return { code: Code.INVALID_ARGUMENT, reason, message };
  // 1001 (going away), 1006 (no close frame), 1011...: the server or the network went away.
  return { code: Code.UNAVAILABLE, reason: reason || "WEBSOCKET_CLOSED", message: message || `socket closed (${code})` };
}

/**
 * Device streams to `url` (the server's `/ws`), authenticated by the token as a subprotocol.
 * A Redirect's address is a gRPC listener, which a WebSocket cannot use: it reconnects here.
 */
export function webSocketStream(url: string, WebSocketImpl?: WebSocketLike): StreamTransport {
  return {
    open(_address: string | undefined, token: string, h: StreamHandlers): DeviceStream {
      const Impl = WebSocketImpl ?? (globalThis.WebSocket as unknown as WebSocketLike);
      const ws = new Impl(url, [PROTOCOL, TOKEN_PREFIX + token]);
      ws.binaryType = "arraybuffer";
      let ended = false;
      const finish = (end: StreamEnd) => {
        if (ended) return;
        ended = true;
        h.closed(end);
      };
      ws.onopen = () => h.open();
      ws.onmessage = (e: MessageEvent) => {
        if (!(e.data instanceof ArrayBuffer)) return;
        let frame: ServerFrame;
        try {
          frame = fromBinary(ServerFrameSchema, new Uint8Array(e.data));
        } catch {
          return; // not a frame we can read: skip it
        }
        h.frame(frame);
      };
      ws.onclose = (e: CloseEvent) => finish(endOfClose(e.code, e.reason));
      ws.onerror = () => {
        /* onclose follows with the code */
      };
      const shut = (code: number, why: string) => {
        try {
          ws.close(code, why);
        } catch {
          /* already closing */
        }
      };
      return {
        send(frame: ClientFrame): boolean {
          if (ended || ws.readyState !== 1) return false; // 1: OPEN
          ws.send(toBinary(ClientFrameSchema, create(ClientFrameSchema, frame)));
          return true;
        },
        end: () => shut(1000, "bye"),
        close() {
          shut(4000, "dropped");
          finish({ code: Code.UNAVAILABLE, reason: "DROPPED", message: "the stream was dropped" });
        },
      };
    },
  };
}

// One WebSocket to /ws carrying binary ClientFrame/ServerFrame, authenticated by subprotocol.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  ClientFrameSchema,
  ServerFrameSchema,
  type ClientFrame,
  type ServerFrame,
} from "./gen/natter/v1/socket_service_pb";

export const PROTOCOL = "natter.v1";
export const TOKEN_PREFIX = "natter.bearer.";

/** Close codes: 4000 + google.rpc.Code for session ends; 4016 means log in again. */
export const UNAUTHENTICATED_CLOSE = 4016;

export interface SocketEvents {
  frame(frame: ServerFrame): void;
  closed(code: number, reason: string): void;
}

export function socketUrl(base: string): string {
  const u = new URL("/ws", base);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.toString();
}

export class Socket {
  private ws: WebSocket;
  private ended = false;

  constructor(url: string, token: string, private events: SocketEvents) {
    this.ws = new WebSocket(url, [PROTOCOL, TOKEN_PREFIX + token]);
    this.ws.binaryType = "arraybuffer";
    this.ws.onmessage = (e: MessageEvent) => {
      if (!(e.data instanceof ArrayBuffer)) return;
      let frame: ServerFrame;
      try {
        frame = fromBinary(ServerFrameSchema, new Uint8Array(e.data));
      } catch {
        return; // a newer server's frame we cannot read: skip it
      }
      this.events.frame(frame);
    };
    this.ws.onclose = (e: CloseEvent) => this.end(e.code, e.reason);
    this.ws.onerror = () => {
      /* onclose follows with the code */
    };
  }

  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN && !this.ended;
  }

  /** Waits for the socket to open, then writes the frame; false once it has ended. */
  async ready(): Promise<boolean> {
    if (this.ws.readyState === WebSocket.OPEN) return true;
    if (this.ws.readyState !== WebSocket.CONNECTING) return false;
    return new Promise((resolve) => {
      this.ws.addEventListener("open", () => resolve(true), { once: true });
      this.ws.addEventListener("close", () => resolve(false), { once: true });
    });
  }

  send(frame: ClientFrame["payload"]): boolean {
    if (!this.open) return false;
    this.ws.send(toBinary(ClientFrameSchema, create(ClientFrameSchema, { payload: frame })));
    return true;
  }

  close(code = 1000, reason = ""): void {
    try {
      this.ws.close(code, reason);
    } catch {
      /* already closing */
    }
    this.end(code, reason);
  }

  private end(code: number, reason: string): void {
    if (this.ended) return;
    this.ended = true;
    this.events.closed(code, reason);
  }
}

// Typed unary clients over the server's Connect gateway (POST /natter.v1.X/Method), from the SDK.
import { NatterError, type NatterClient, type Services } from "@natter/client";
import { ConnectError } from "@connectrpc/connect";
import { webClient } from "@natter/client/web";

/** The service clients (for every call), and the SDK client the connection uses. */
export interface Api extends Services {
  client: NatterClient;
}

export function makeApi(baseUrl: string, token: () => string): Api {
  const client = webClient(baseUrl, { token: token() });
  // The token changes with logins: every call reads the current one.
  Object.defineProperty(client, "token", { get: token, set: () => undefined });
  return { ...client.services, client };
}

export function isUnauthenticated(e: unknown): boolean {
  return NatterError.from(e).unauthenticated;
}

export function isUnimplemented(e: unknown): boolean {
  return NatterError.from(e).code === 12;
}

/** A sentence for people: the server's message without the "[code]" prefix. */
export function problem(e: unknown): string {
  if (e instanceof NatterError || e instanceof ConnectError) {
    const err = NatterError.from(e);
    if (err.code === 14 || err.code === 2) {
      return "The server cannot be reached right now. Try again when you are online.";
    }
    return err.message;
  }
  if (e instanceof Error) return e.message;
  return String(e);
}

// Attachments over HTTP: resumable chunked uploads (create, PATCH chunks, complete) with fetch.
import { fromJson } from "@bufbuild/protobuf";
import { Code, NatterError } from "./errors.js";
import { AttachmentSchema, type Attachment } from "./gen/natter/v1/types_pb.js";

/** What the server should know of a file before its bytes. */
export interface UploadInfo {
  name: string;
  /** The declared MIME type; the server sniffs the content and keeps what it finds. */
  type: string;
  voiceNote?: boolean;
  durationMs?: number;
}

export interface UploadOptions {
  /** The HTTP listener, e.g. `http://127.0.0.1:7080`; empty in a browser: the page's origin. */
  baseUrl?: string;
  token: string;
  /** Bytes per PATCH (at most the server's `chunk_bytes`); smaller chunks report progress more often. */
  chunkBytes?: number;
  /** Called after each chunk with the bytes the server holds. */
  progress?: (sent: number, total: number) => void;
  /** An upload started earlier (a retry): resume from where the server stands. */
  uploadId?: string;
  /** Called as soon as the upload exists, so a caller can resume it after a failure. */
  started?: (uploadId: string) => void;
  signal?: AbortSignal;
}

const HTTP_CODES: Record<number, (typeof Code)[keyof typeof Code]> = {
  400: Code.INVALID_ARGUMENT,
  401: Code.UNAUTHENTICATED,
  403: Code.PERMISSION_DENIED,
  404: Code.NOT_FOUND,
  409: Code.FAILED_PRECONDITION,
  413: Code.RESOURCE_EXHAUSTED,
  503: Code.UNAVAILABLE,
};

async function refusal(res: Response): Promise<NatterError> {
  let body: { message?: string; reason?: string } = {};
  try {
    body = (await res.json()) as typeof body;
  } catch {
    /* not JSON: a proxy's page */
  }
  const code = HTTP_CODES[res.status] ?? (res.status >= 500 ? Code.UNAVAILABLE : Code.UNKNOWN);
  return new NatterError(code, body.message ?? `HTTP ${res.status}`, body.reason ?? "");
}

async function call(url: string, init: RequestInit): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(url, init);
  } catch (e) {
    if (init.signal?.aborted) throw new NatterError(Code.CANCELLED, "the upload was cancelled", "CANCELLED");
    throw new NatterError(Code.UNAVAILABLE, `the upload was interrupted: ${e instanceof Error ? e.message : String(e)}`, "NETWORK");
  }
  if (!res.ok) throw await refusal(res);
  return res;
}

/**
 * Uploads a file in chunks and returns the stored attachment (send its `attachmentId`). A
 * failure throws a NatterError; pass the `uploadId` from `started` to resume after one.
 */
export async function upload(file: Blob, info: UploadInfo, options: UploadOptions): Promise<Attachment> {
  const base = options.baseUrl ?? "";
  const auth = { Authorization: `Bearer ${options.token}` };
  const signal = options.signal;
  let id = options.uploadId ?? "";
  let offset = 0;
  if (id) {
    const res = await call(`${base}/v1/uploads/${id}`, { method: "HEAD", headers: auth, signal });
    offset = Number(res.headers.get("Upload-Offset") ?? 0);
  } else {
    const res = await call(`${base}/v1/uploads`, {
      method: "POST",
      headers: { ...auth, "Content-Type": "application/json" },
      body: JSON.stringify({ size: file.size, name: info.name, type: info.type, voice_note: !!info.voiceNote, duration_ms: info.durationMs ?? 0 }),
      signal,
    });
    id = ((await res.json()) as { upload_id: string }).upload_id;
  }
  options.started?.(id);
  const chunk = Math.max(1, options.chunkBytes ?? 1 << 20);
  options.progress?.(offset, file.size);
  while (offset < file.size) {
    const body = await file.slice(offset, Math.min(file.size, offset + chunk)).arrayBuffer();
    const res = await call(`${base}/v1/uploads/${id}`, {
      method: "PATCH",
      headers: { ...auth, "Upload-Offset": String(offset), "Content-Type": "application/offset+octet-stream" },
      body,
      signal,
    });
    offset = Number(res.headers.get("Upload-Offset") ?? offset + body.byteLength);
    options.progress?.(offset, file.size);
  }
  const res = await call(`${base}/v1/uploads/${id}/complete`, { method: "POST", headers: auth, signal });
  const json = (await res.json()) as { attachment: Parameters<typeof fromJson<typeof AttachmentSchema>>[1] };
  return fromJson(AttachmentSchema, json.attachment, { ignoreUnknownFields: true });
}

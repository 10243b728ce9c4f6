// Attachments over HTTP: resumable chunked uploads and authenticated downloads (docs/messages.md).
package dev.natter.client

import dev.natter.v1.Attachment
import io.grpc.Status
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext
import java.io.IOException
import java.net.HttpURLConnection
import java.net.URL

/** What an HTTP exchange answered; header names in lower case. */
class HttpReply(val status: Int, val headers: Map<String, String>, val body: ByteArray)

/**
 * One blocking HTTP exchange (the SDK calls it off the main thread). The default uses
 * `HttpURLConnection`, which on Android (OkHttp inside) speaks every method uploads need; the
 * JDK's refuses `PATCH`, so on the JVM pass one over `java.net.http.HttpClient` (docs/clients.md).
 */
fun interface HttpTransport {
    @Throws(IOException::class)
    fun exchange(method: String, url: String, headers: Map<String, String>, body: ByteArray?): HttpReply

    companion object {
        fun urlConnection(): HttpTransport = HttpTransport { method, url, headers, body ->
            val c = URL(url).openConnection() as HttpURLConnection
            try {
                c.requestMethod = method
                c.connectTimeout = 15_000
                c.readTimeout = 60_000
                for ((k, v) in headers) c.setRequestProperty(k, v)
                if (body != null) {
                    c.doOutput = true
                    c.setFixedLengthStreamingMode(body.size)
                    c.outputStream.use { it.write(body) }
                }
                val status = c.responseCode
                val stream = if (status >= 400) c.errorStream else if (method == "HEAD") null else c.inputStream
                val bytes = stream?.use { it.readBytes() } ?: ByteArray(0)
                val names = c.headerFields.keys.filterNotNull()
                HttpReply(status, names.associate { it.lowercase() to (c.getHeaderField(it) ?: "") }, bytes)
            } finally {
                c.disconnect()
            }
        }
    }
}

/**
 * Uploads [data] as an attachment in chunks (the server's `chunk_bytes` unless [chunkBytes]),
 * resuming from the offset the server holds when a chunk's exchange fails; returns the stored
 * [Attachment] (its type sniffed by the server, image size and thumbnail worked out) to send
 * with [Connection.send]'s `attachmentIds`. Refusals are [NatterException]s with the server's
 * reason (`EMPTY_FILE`, `FILE_TOO_LARGE`, `MIME_MISMATCH`, ...).
 */
suspend fun NatterClient.upload(
    data: ByteArray,
    name: String,
    mimeType: String = "",
    voiceNote: Boolean = false,
    durationMs: Long = 0,
    http: HttpTransport = HttpTransport.urlConnection(),
    chunkBytes: Int = 0,
): Attachment {
    val info = mediaInfo()
    val base = info.httpUrl.trimEnd('/')
    val chunk = if (chunkBytes > 0) chunkBytes else info.chunkBytes.toInt().coerceAtLeast(64 * 1024)
    val auth = mapOf("Authorization" to "Bearer $token")
    val id = withContext(Dispatchers.IO) {
        val create = "{\"size\":${data.size},\"name\":${json(name)},\"type\":${json(mimeType)}," +
            "\"voice_note\":$voiceNote,\"duration_ms\":$durationMs}"
        val reply = checked(http.exchange("POST", "$base/v1/uploads", auth + ("Content-Type" to "application/json"), create.toByteArray()))
        field(reply.body, "upload_id")
    }
    val at = "$base/v1/uploads/$id"
    withContext(Dispatchers.IO) {
        var offset = 0
        var failures = 0
        while (offset < data.size) {
            val end = minOf(data.size, offset + chunk)
            val reply = try {
                http.exchange(
                    "PATCH", at,
                    auth + mapOf("Upload-Offset" to offset.toString(), "Content-Type" to "application/offset+octet-stream"),
                    data.copyOfRange(offset, end),
                )
            } catch (e: IOException) {
                null.also { if (++failures > 5) throw UnavailableException("UPLOAD_FAILED", "upload of $name: ${e.message}", e) }
            }
            offset = when {
                reply != null && reply.status == 204 -> reply.headers["upload-offset"]?.toIntOrNull() ?: end
                // The connection broke, or the server holds another offset: ask it where to go on.
                reply == null || reply.status == 409 -> {
                    if (reply != null && ++failures > 5) checked(reply)
                    checked(http.exchange("HEAD", at, auth, null)).headers["upload-offset"]?.toIntOrNull() ?: 0
                }
                else -> {
                    checked(reply)
                    end
                }
            }
        }
    }
    val attachmentId = withContext(Dispatchers.IO) {
        field(checked(http.exchange("POST", "$at/complete", auth, ByteArray(0))).body, "attachmentId")
    }
    return attachment(attachmentId).attachment
}

/** The content of an attachment this user may see (the uploader, or a member who can see a message with it). */
suspend fun NatterClient.download(attachmentId: String, http: HttpTransport = HttpTransport.urlConnection()): ByteArray {
    val base = mediaInfo().httpUrl.trimEnd('/')
    return withContext(Dispatchers.IO) {
        checked(http.exchange("GET", "$base/v1/attachments/$attachmentId", mapOf("Authorization" to "Bearer $token"), null)).body
    }
}

private fun checked(reply: HttpReply): HttpReply {
    if (reply.status < 300) return reply
    val body = String(reply.body, Charsets.UTF_8)
    val code = when (reply.status) {
        400 -> Status.Code.INVALID_ARGUMENT
        401 -> Status.Code.UNAUTHENTICATED
        403 -> Status.Code.PERMISSION_DENIED
        404 -> Status.Code.NOT_FOUND
        409 -> if (jsonField(body, "code") == "already_exists") Status.Code.ALREADY_EXISTS else Status.Code.FAILED_PRECONDITION
        413 -> Status.Code.RESOURCE_EXHAUSTED
        503 -> Status.Code.UNAVAILABLE
        504 -> Status.Code.DEADLINE_EXCEEDED
        else -> Status.Code.INTERNAL
    }
    throw NatterException.of(code, jsonField(body, "message") ?: "HTTP ${reply.status}", jsonField(body, "reason") ?: code.name)
}

private fun field(body: ByteArray, name: String): String =
    jsonField(String(body, Charsets.UTF_8), name) ?: throw InternalException("BAD_REPLY", "no $name in the server's answer")

/** A string member of a JSON object (the answers here are flat where it matters, ids have no escapes). */
private fun jsonField(body: String, name: String): String? =
    Regex("\"" + Regex.escape(name) + "\"\\s*:\\s*\"((?:[^\"\\\\]|\\\\.)*)\"").find(body)?.groupValues?.get(1)

private fun json(s: String): String {
    val out = StringBuilder("\"")
    for (ch in s) {
        when {
            ch == '"' -> out.append("\\\"")
            ch == '\\' -> out.append("\\\\")
            ch < ' ' -> out.append(String.format("\\u%04x", ch.code))
            else -> out.append(ch)
        }
    }
    return out.append('"').toString()
}

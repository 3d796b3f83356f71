import Foundation
import Hummingbird
import HummingbirdWebSocket
import NIOCore
import TalkieCore
import TalkieRunner

extension StudioError: HTTPResponseError {
    public var status: HTTPResponse.Status { .init(code: httpStatus) }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        APIResponse.error(self)
    }
}

/// The request context: WebSocket-capable, so `/ws` lives in the same router.
public typealias StudioContext = BasicWebSocketRequestContext

/// Builds the studio's HTTP application: the page, the API, the WebSocket, face2face.
public func buildApplication(_ config: StudioConfiguration, studio: Studio,
                             onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in })
    -> some ApplicationProtocol {
    let router = buildRouter(config, studio: studio)
    return Application(
        router: router,
        server: StudioChannel.builder(webSocketRouter: router),
        configuration: .init(address: .hostname(config.host, port: config.port), serverName: "Talkie"),
        services: [StudioService(studio: studio)],
        onServerRunning: onServerRunning)
}

/// The router alone (tests drive it without a socket).
public func buildRouter(_ config: StudioConfiguration, studio: Studio) -> Router<StudioContext> {
    let router = Router(context: StudioContext.self)
    router.add(middleware: GuardMiddleware(token: config.token, allowedHosts: GuardMiddleware<StudioContext>.hosts(bind: config.host)))
    router.add(middleware: FileMiddleware(config.webRoot, searchForIndexHtml: true))

    let api = router.group("api")
    api.get("state") { _, _ in APIResponse.json(encoded: await studio.stateJSON()) }

    // Inputs: streamed, hashed, stored by content key.
    api.post("inputs/audio") { request, context in
        try await upload(request, context: context, studio: studio, config: config, isAudio: true)
    }
    api.post("inputs/videos") { request, context in
        try await upload(request, context: context, studio: studio, config: config, isAudio: false)
    }
    api.delete("inputs/videos/:key") { _, context in
        guard let key = context.parameters.get("key").flatMap(ContentHash.init(hex:)) else {
            throw StudioError(404, "input.not_found", "no such template")
        }
        guard try await studio.removeVideo(key) else { throw StudioError(404, "input.not_found", "no such template") }
        return Response(status: .noContent)
    }
    for kind in ["audio", "videos"] {
        api.get("inputs/\(kind)/:key") { request, context in
            guard let key = context.parameters.get("key").flatMap(ContentHash.init(hex:)),
                  let path = await studio.inputPath(audio: kind == "audio", key: key) else {
                throw StudioError(404, "input.not_found", "no such input")
            }
            return try await Files.respond(path: path, request: request, context: context,
                                           contentType: kind == "audio" ? mediaType(path, default: "audio/wav") : mediaType(path, default: "video/mp4"))
        }
    }

    // Settings and commands.
    api.put("settings") { request, context in
        let body = try await request.body.collect(upTo: 1 << 20)
        guard let patch = try? JSONDecoder().decode(SettingsPatch.self, from: Data(buffer: body)) else {
            throw StudioError(400, "settings.invalid", "the body must be JSON: {\"engine\"?, \"engineParams\"?, \"denoise\"?, \"tempo\"?}")
        }
        var overrides = SettingsOverrides(engine: patch.engine, engineParams: patch.engineParams ?? [:], denoise: patch.denoise, tempo: patch.tempo)
        overrides.replacesParams = patch.engineParams != nil
        let settings = try await wrap { try await studio.updateSettings(overrides) }
        return APIResponse.json(SettingsAnswer(settings: settings, fingerprint: settings.fingerprint))
    }
    api.post("batch/start") { _, _ in try await studio.start(); return accepted() }
    api.post("batch/pause") { _, _ in await studio.pause(); return accepted() }
    api.post("batch/stop") { _, _ in await studio.stop(); return accepted() }
    api.post("batch/retry-failed") { _, _ in try await studio.start(retry: .failed); return accepted() }
    api.post("batch/rerender-other-settings") { _, _ in try await studio.start(retry: .otherSettings); return accepted() }
    api.post("batch/reset") { request, _ in
        let body = try await request.body.collect(upTo: 1 << 16)
        let confirm = (try? JSONDecoder().decode([String: Bool].self, from: Data(buffer: body)))?["confirm"] == true
        guard confirm else { throw StudioError(400, "reset.unconfirmed", "clearing history forgets which items are done (outputs are kept); send {\"confirm\": true}") }
        let forgotten = try await wrap { try await studio.reset() }
        return APIResponse.json(["forgotten": forgotten])
    }
    api.post("items/:key/skip") { _, context in
        guard let key = context.parameters.get("key").flatMap(ItemKey.init(id:)) else { throw StudioError(404, "item.not_found", "no such item") }
        guard try await wrap({ try await studio.skip(key) }) else { throw StudioError(404, "item.not_found", "no such pending or running item") }
        return accepted()
    }

    // Outputs, log, backup.
    api.get("outputs/:name") { request, context in
        guard let name = context.parameters.get("name")?.removingPercentEncoding,
              let path = Files.safeFile(name, in: config.outputs), name.hasSuffix(".mp4") || name.hasSuffix(".png") else {
            throw StudioError(404, "output.not_found", "no such output")
        }
        return try await Files.respond(path: path, request: request, context: context, contentType: name.hasSuffix(".png") ? "image/png" : "video/mp4")
    }
    api.get("outputs.zip") { _, _ in
        let items = await studio.state().items
        let files = items.compactMap { item in item.output.flatMap { name in Files.safeFile(name, in: config.outputs).map { (name: name, path: $0) } } }
        return Response(status: .ok, headers: [.contentType: "application/zip", .contentDisposition: "attachment; filename=\"talkie-outputs.zip\""],
                        body: Files.zip(files))
    }
    api.get("log") { request, _ in
        let count = min(5_000, max(1, request.uri.queryParameters["lines"].flatMap { Int($0) } ?? 200))
        return APIResponse.json(["lines": tail(config.outputs + "/talkie.log", lines: count)])
    }
    api.get("backup") { request, context in
        guard let path = Files.safeFile("task_status.json", in: config.outputs) else {
            throw StudioError(404, "backup.none", "there is no task_status.json yet: run a batch first")
        }
        return try await Files.respond(path: path, request: request, context: context, contentType: "application/json",
                                       attachmentName: "task_status.json")
    }

    // Live events.
    router.ws("ws") { inbound, outbound, _ in
        let (id, messages) = studio.broadcaster.subscribe()
        defer { studio.broadcaster.unsubscribe(id) }
        try await outbound.write(.text("{\"type\":\"snapshot\",\"state\":" + String(decoding: await studio.stateJSON(), as: UTF8.self) + "}"))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { for try await _ in inbound {} }  // ends when the page goes away
            group.addTask { for await message in messages { try await outbound.write(.text(message)) } }
            _ = try await group.next()
            group.cancelAll()
        }
    }

    Face2FaceRoutes.add(to: router, config: config, studio: studio)
    return router
}

private struct SettingsPatch: Decodable {
    var engine: String?
    var engineParams: [String: JSONValue]?
    var denoise: Double?
    var tempo: Double?
}

private struct SettingsAnswer: Encodable {
    var settings: RenderSettings
    var fingerprint: String
}

private func accepted() -> Response { APIResponse.json(["accepted": true], status: .accepted) }

/// Turns store and runner errors into API errors with a message.
func wrap<T>(_ body: () async throws -> T) async throws -> T {
    do { return try await body() } catch let error as StudioError { throw error } catch let error as any TalkieError {
        throw StudioError(error.code == "store.locked" ? 409 : 500, error.code, error.message)
    }
}

private func upload(_ request: Request, context: StudioContext, studio: Studio, config: StudioConfiguration, isAudio: Bool) async throws -> Response {
    if let length = request.headers[.contentLength].flatMap({ Int64($0) }), length > config.maxUploadBytes {
        throw StudioError(413, "upload.too_large", "the upload is larger than this server's limit of \(config.maxUploadBytes >> 20) MiB (--max-upload-mb)")
    }
    let name = InputLibrary.label(request.uri.queryParameters["name"].map(String.init))
    let received = try await Files.receive(request.body, into: config.inputs + "/uploads", cap: config.maxUploadBytes)
    let duplicate = try await wrap { try await studio.addUpload(received, name: name, isAudio: isAudio) }
    struct Answer: Encodable { var key: String; var name: String; var size: Int64; var duplicate: Bool }
    return APIResponse.json(Answer(key: received.key.hex, name: name, size: received.size, duplicate: duplicate), status: .created)
}

private func mediaType(_ path: String, default fallback: String) -> String {
    switch (path as NSString).pathExtension.lowercased() {
    case "mp4", "m4v": "video/mp4"
    case "mov": "video/quicktime"
    case "webm": "video/webm"
    case "mkv": "video/x-matroska"
    case "wav": "audio/wav"
    case "mp3": "audio/mpeg"
    case "m4a", "aac": "audio/mp4"
    case "ogg", "oga": "audio/ogg"
    case "flac": "audio/flac"
    default: fallback
    }
}

/// The last `lines` lines of a text file, reading only its end.
func tail(_ path: String, lines: Int) -> [String] {
    // Not through a symbolic link (it could point outside the workspace), and only a
    // regular file (a FIFO would block the request for good).
    let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
    guard fd >= 0 else { return [] }
    var info = stat()
    guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
        close(fd)
        return []
    }
    let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
    let size = (try? handle.seekToEnd()) ?? 0
    var window: UInt64 = 64 << 10
    while true {
        let start = size > window ? size - window : 0
        try? handle.seek(toOffset: start)
        let data = (try? handle.readToEnd()) ?? Data()
        var all = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
        if start > 0 { all.removeFirst() }  // a partial first line
        if all.count >= lines || start == 0 { return Array(all.suffix(lines)) }
        window *= 4
    }
}

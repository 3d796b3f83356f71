import Foundation
import Hummingbird

/// HeyGem's face2face pair, so existing clients and scripts submit to Talkie unchanged:
/// `POST /easy/submit` and `GET /easy/query?code=`, answering `{code, success, msg, data}`.
enum Face2FaceRoutes {
    /// HeyGem's answer codes.
    enum Code: Int {
        case ok = 10000
        case badParameter = 10002
        case unknownTask = 10004
        case internalError = 9999
    }

    struct Submit: Decodable {
        var audio_url: String?
        var video_url: String?
        var code: String?
        var chaofen: Int?
        var watermark_switch: Int?
        var digital_auth: Int?
        var pn: Int?
    }

    static func add(to router: Router<StudioContext>, config: StudioConfiguration, studio: Studio) {
        router.post("easy/submit") { request, _ in
            let body = try await request.body.collect(upTo: 1 << 20)
            guard let submit = try? JSONDecoder().decode(Submit.self, from: Data(buffer: body)) else {
                return envelope(.badParameter, "the body must be JSON with audio_url, video_url and code")
            }
            guard let code = submit.code, !code.isEmpty, code.count <= 200 else { return envelope(.badParameter, "code is required") }
            do {
                let audio = try allowedFile(submit.audio_url, config: config, what: "audio_url")
                let video = try allowedFile(submit.video_url, config: config, what: "video_url")
                try await studio.submitFace2Face(code: code, audio: audio, video: video)
            } catch let error as StudioError {
                return envelope(error.code == "10002" || error.httpStatus == 400 ? .badParameter : .internalError, error.message)
            } catch {
                return envelope(.internalError, "\(error)")
            }
            return envelope(.ok, "")
        }
        router.get("easy/query") { request, _ in
            guard let code = request.uri.queryParameters["code"].map(String.init), !code.isEmpty else {
                return envelope(.badParameter, "code is required")
            }
            guard let status = await studio.queryFace2Face(code) else { return envelope(.unknownTask, "no task with code \(code)") }
            return APIResponse.json(Envelope(code: Code.ok.rawValue, success: true, msg: "", data: status))
        }
    }

    /// A path on the server's disk inside the workspace or an allowed folder, as a real
    /// file; URLs are refused (Talkie fetches nothing).
    static func allowedFile(_ value: String?, config: StudioConfiguration, what: String) throws -> String {
        guard let value, !value.isEmpty, !value.contains("\0") else { throw StudioError(400, "10002", "\(what) is required") }
        if value.lowercased().hasPrefix("http://") || value.lowercased().hasPrefix("https://") {
            throw StudioError(400, "10002", "\(what) is a URL; Talkie reads files on this server only (give its path)")
        }
        guard value.hasPrefix("/") else { throw StudioError(400, "10002", "\(what) must be an absolute path on the server") }
        let resolved = URL(fileURLWithPath: value).standardizedFileURL.resolvingSymlinksInPath().path
        let roots = [URL(fileURLWithPath: config.workspace).resolvingSymlinksInPath().path] + config.allowedFolders
        guard roots.contains(where: { resolved == $0 || resolved.hasPrefix($0 + "/") }) else {
            throw StudioError(400, "10002", "\(what) is outside the folders this server may read (the workspace and --allow-dir)")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: resolved, isDirectory: &isDirectory), !isDirectory.boolValue else {
            throw StudioError(400, "10002", "\(what) \(value) does not exist")
        }
        return resolved
    }

    struct Envelope<Payload: Encodable>: Encodable {
        var code: Int
        var success: Bool
        var msg: String
        var data: Payload
    }

    struct Empty: Encodable {}

    static func envelope(_ code: Code, _ message: String) -> Response {
        APIResponse.json(Envelope(code: code.rawValue, success: code == .ok, msg: message, data: Empty()))
    }
}

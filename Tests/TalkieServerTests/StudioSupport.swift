import Foundation
import Hummingbird
import HummingbirdTesting
import TalkieMedia
import TalkieRunner
@testable import TalkieServer

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// A studio on a fresh workspace, removed when the value goes away.
final class StudioFixture: @unchecked Sendable {
    let folder: String
    let config: StudioConfiguration
    let studio: Studio

    init(token: String? = nil, maxUploadBytes: Int64 = 1 << 30, host: String = "127.0.0.1", port: Int = 0) throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("talkie-studio-\(UUID().uuidString.prefix(8))").path
        config = StudioConfiguration(workspace: folder + "/workspace", host: host, port: port, token: token, maxUploadBytes: maxUploadBytes,
                                     allowedFolders: [folder + "/media"], engines: EngineCatalog(root: repositoryRoot),
                                     retryPolicy: .init(maxAttempts: 2, initialDelay: 0))
        try FileManager.default.createDirectory(atPath: folder + "/media", withIntermediateDirectories: true)
        studio = try Studio(config)
    }

    deinit { try? FileManager.default.removeItem(atPath: folder) }

    /// The router-only application (no socket, no job service).
    var routerApp: some ApplicationProtocol { Application(router: buildRouter(config, studio: studio)) }

    /// Makes a narration (espeak-ng) and `count` distinct template videos (ffmpeg) in media/.
    func makeMedia(templates count: Int) async throws -> (audio: String, videos: [String]) {
        let media = folder + "/media"
        let audio = media + "/narration.wav"
        _ = try await Tool.run("espeak-ng", ["-v", "en-us", "-w", audio, "The studio renders this narration."])
        var videos: [String] = []
        for n in 1...count {
            let video = media + "/template\(n).mp4"
            _ = try await Tool.run("ffmpeg", ["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                                              "testsrc=size=160x120:rate=25:duration=\(1 + Double(n) / 10)",
                                              "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", video])
            videos.append(video)
        }
        return (audio, videos)
    }
}

extension ByteBuffer {
    init(file path: String) throws {
        self.init(data: try Data(contentsOf: URL(fileURLWithPath: path)))
    }
}

func json(_ buffer: ByteBuffer) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(buffer: buffer))) as? [String: Any] ?? [:]
}

import Foundation
import Hummingbird
import HTTPTypes
import HummingbirdTesting
import TalkieCore
import TalkieRunner
import TalkieStore
import Testing
@testable import TalkieServer

/// The API through the router, no socket: uploads, settings, commands, and every security rule.
@Suite struct RouterTests {
    @Test func theStateOfAnEmptyStudio() async throws {
        let fixture = try StudioFixture()
        try await fixture.routerApp.test(.router) { client in
            try await client.execute(uri: "/api/state", method: .get) { response in
                #expect(response.status == .ok)
                let state = json(response.body)
                #expect(state["audio"] is NSNull)
                #expect((state["items"] as? [Any])?.isEmpty == true)
                #expect((state["engines"] as? [String]) == ["classic", "wav2lip", "face2face", "command", "test"])
            }
            try await client.execute(uri: "/", method: .get) { response in
                #expect(response.status == .ok, "the page is served at /")
            }
        }
    }

    @Test func uploadsAreStoredByContentAndDuplicatesRecognised() async throws {
        let fixture = try StudioFixture()
        let media = try await fixture.makeMedia(templates: 2)
        try await fixture.routerApp.test(.router) { client in
            try await client.execute(uri: "/api/inputs/audio?name=narration.wav", method: .post, body: try ByteBuffer(file: media.audio)) { response in
                #expect(response.status == .created)
            }
            var keys: [String] = []
            for (index, name) in ["a.mp4", "b.mp4", "../../a%20copy.mp4"].enumerated() {
                let file = media.videos[index == 2 ? 0 : index]
                try await client.execute(uri: "/api/inputs/videos?name=\(name)", method: .post, body: try ByteBuffer(file: file)) { response in
                    #expect(response.status == .created)
                    let answer = json(response.body)
                    keys.append(answer["key"] as? String ?? "")
                    #expect((answer["duplicate"] as? Bool) == (index == 2))
                    if index == 2 { #expect(answer["name"] as? String == "a copy.mp4", "only a label, never a path") }
                }
            }
            #expect(keys[0] == keys[2])
            try await client.execute(uri: "/api/state", method: .get) { response in
                let state = json(response.body)
                let videos = state["videos"] as? [[String: Any]] ?? []
                #expect(videos.count == 2)
                #expect((videos.first?["names"] as? [String]) == ["a.mp4", "a copy.mp4"])
                #expect((state["items"] as? [[String: Any]])?.count == 2)
            }
        }
        let stored = try FileManager.default.contentsOfDirectory(atPath: fixture.config.workspace + "/inputs/videos").sorted()
        #expect(stored.count == 2 && stored.allSatisfy { $0.count == 36 && $0.hasSuffix(".mp4") }, "\(stored)")
    }

    @Test func anOversizedUploadIs413AndLeavesNothing() async throws {
        let fixture = try StudioFixture(maxUploadBytes: 1_000)
        try await fixture.routerApp.test(.router) { client in
            try await client.execute(uri: "/api/inputs/videos?name=big.mp4", method: .post, body: ByteBuffer(repeating: 7, count: 5_000)) { response in
                #expect(response.status == .contentTooLarge)
                #expect((json(response.body)["error"] as? [String: Any])?["code"] as? String == "upload.too_large")
            }
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.config.workspace + "/inputs/uploads").isEmpty)
    }

    @Test func settingsAreValidated() async throws {
        let fixture = try StudioFixture()
        try await fixture.routerApp.test(.router) { client in
            for body in ["{\"tempo\": 5}", "{\"engine\": \"nonesuch\"}", "not json"] {
                try await client.execute(uri: "/api/settings", method: .put, body: ByteBuffer(string: body)) { response in
                    #expect(response.status == .badRequest, "\(body)")
                }
            }
            try await client.execute(uri: "/api/settings", method: .put, body: ByteBuffer(string: "{\"engine\": \"test\", \"tempo\": 1.1, \"engineParams\": {\"delay\": 0}}")) { response in
                #expect(response.status == .ok)
                let settings = json(response.body)["settings"] as? [String: Any]
                #expect(settings?["engine"] as? String == "test" && settings?["tempo"] as? Double == 1.1)
            }
        }
        #expect(throws: StoreError.self, "one studio per workspace") { try Studio(fixture.config) }
        fixture.studio.releaseWorkspace()
        let reopened = try Studio(fixture.config)
        #expect(await reopened.state().settings.engine == "test", "settings survive a restart")
    }

    @Test func commandsExplainWhatIsMissing() async throws {
        let fixture = try StudioFixture()
        try await fixture.routerApp.test(.router) { client in
            try await client.execute(uri: "/api/batch/start", method: .post) { response in
                #expect(response.status == .badRequest)
                #expect((json(response.body)["error"] as? [String: Any])?["code"] as? String == "batch.no_audio")
            }
            try await client.execute(uri: "/api/batch/reset", method: .post, body: ByteBuffer(string: "{}")) { response in
                #expect(response.status == .badRequest)
            }
            try await client.execute(uri: "/api/batch/reset", method: .post, body: ByteBuffer(string: "{\"confirm\": true}")) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/api/items/nonsense/skip", method: .post) { response in
                #expect(response.status == .notFound)
            }
            try await client.execute(uri: "/api/backup", method: .get) { response in
                #expect(response.status == .ok, "reset wrote a snapshot")
            }
        }
    }

    @Test func theTokenIsRequiredWhenSet() async throws {
        let fixture = try StudioFixture(token: "s3cret-token-value")
        try await fixture.routerApp.test(.router) { client in
            try await client.execute(uri: "/api/state", method: .get) { #expect($0.status == .unauthorized) }
            try await client.execute(uri: "/", method: .get) { #expect($0.status == .unauthorized) }
            try await client.execute(uri: "/api/state", method: .get, headers: [.authorization: "Bearer wrong-token-value"]) { #expect($0.status == .unauthorized) }
            try await client.execute(uri: "/api/state", method: .get, headers: [.authorization: "Bearer s3cret-token-value"]) { #expect($0.status == .ok) }
            try await client.execute(uri: "/api/state?token=s3cret-token-value", method: .get) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.setCookie]?.contains("talkie_token=s3cret-token-value") == true)
            }
            try await client.execute(uri: "/api/state", method: .get, headers: [.cookie: "other=1; talkie_token=s3cret-token-value"]) { #expect($0.status == .ok) }
        }
        #expect(constantTimeEqual("abc", "abc") && !constantTimeEqual("abc", "abd") && !constantTimeEqual("abc", "abcd"))
    }

    @Test func pathsCannotLeaveTheWorkspace() async throws {
        let fixture = try StudioFixture()
        let outputs = fixture.config.workspace + "/outputs"
        try Data("secret".utf8).write(to: URL(fileURLWithPath: fixture.folder + "/secret.mp4"))
        try FileManager.default.createSymbolicLink(atPath: outputs + "/link.mp4", withDestinationPath: fixture.folder + "/secret.mp4")
        try Data("ok".utf8).write(to: URL(fileURLWithPath: outputs + "/real.mp4"))
        try await fixture.routerApp.test(.router) { client in
            for uri in ["/api/outputs/..%2Fsecret.mp4", "/api/outputs/%2E%2E%2F%2E%2E%2Fsecret.mp4", "/api/outputs/%2Fetc%2Fpasswd",
                        "/api/outputs/link.mp4", "/api/outputs/real.mp4%00.png", "/api/outputs/.talkie.lock",
                        "/api/inputs/videos/..%2F..%2Fsecret", "/../secret.mp4", "/%2e%2e/%2e%2e/etc/passwd"] {
                try await client.execute(uri: uri, method: .get) { response in
                    #expect(response.status == .notFound || response.status == .badRequest, "\(uri) → \(response.status)")
                    #expect(!String(buffer: response.body).contains("secret"), "\(uri)")
                }
            }
            try await client.execute(uri: "/api/outputs/real.mp4", method: .get) { #expect($0.status == .ok) }
        }
    }

    @Test func face2faceChecksItsParameters() async throws {
        let fixture = try StudioFixture()
        let media = try await fixture.makeMedia(templates: 1)
        func submit(_ body: String) async throws -> [String: Any] {
            try await fixture.routerApp.test(.router) { client in
                try await client.execute(uri: "/easy/submit", method: .post, body: ByteBuffer(string: body)) { json($0.body) }
            }
        }
        #expect(try await submit("{\"audio_url\": \"https://example.com/a.wav\", \"video_url\": \"\(media.videos[0])\", \"code\": \"t1\"}")["code"] as? Int == 10002)
        #expect(try await submit("{\"audio_url\": \"/etc/passwd\", \"video_url\": \"\(media.videos[0])\", \"code\": \"t1\"}")["code"] as? Int == 10002)
        #expect(try await submit("{\"audio_url\": \"\(media.audio)\", \"video_url\": \"\(media.videos[0])\"}")["code"] as? Int == 10002)
        let ok = try await submit("{\"audio_url\": \"\(media.audio)\", \"video_url\": \"\(media.videos[0])\", \"code\": \"t1\", \"chaofen\": 0, \"watermark_switch\": 0, \"pn\": 1}")
        #expect(ok["code"] as? Int == 10000 && ok["success"] as? Bool == true)
        try await fixture.routerApp.test(.router) { client in
            try await client.execute(uri: "/easy/query?code=t1", method: .get) { response in
                let data = json(response.body)["data"] as? [String: Any]
                #expect(data?["status"] as? Int == 1 && data?["code"] as? String == "t1")
            }
            try await client.execute(uri: "/easy/query?code=unknown", method: .get) { response in
                #expect(json(response.body)["code"] as? Int == 10004)
            }
        }
    }

    @Test func aSymlinkedRunLogIsNeitherReadNorWritten() async throws {
        let fixture = try StudioFixture()
        let secret = fixture.folder + "/secret.txt"
        try "SECRET\n".write(toFile: secret, atomically: false, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: fixture.config.outputs + "/talkie.log", withDestinationPath: secret)
        try await fixture.routerApp.test(.router) { client in
            try await client.execute(uri: "/api/log", method: .get) { response in
                #expect(response.status == .ok)
                #expect(!String(buffer: response.body).contains("SECRET"))
            }
        }
        RunLog(path: fixture.config.outputs + "/talkie.log").write(TimedEvent(time: Date(), event: .warning("into the link?")))
        #expect(try String(contentsOfFile: secret, encoding: .utf8) == "SECRET\n")
    }
}

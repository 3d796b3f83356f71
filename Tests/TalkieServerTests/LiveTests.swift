import Foundation
import Hummingbird
import HummingbirdTesting
import HummingbirdWSClient
import HTTPTypes
import Logging
import NIOCore
import Synchronization
import TalkieMedia
import Testing
@testable import TalkieServer

/// A value several tasks update.
final class Shared<Value: Sendable>: Sendable {
    private let value: Mutex<Value>
    init(_ value: Value) { self.value = Mutex(value) }
    func withLock<Result>(_ body: (inout Value) -> Result) -> Result { value.withLock { body(&$0) } }
}

/// The studio over a real socket: a whole batch through the API with live WebSocket events,
/// downloads with Range, the zip, face2face to the end, and the rules a socket can show.
@Suite(.serialized) struct LiveTests {
    @Test func aBatchThroughTheAPIWithLiveEvents() async throws {
        let fixture = try StudioFixture()
        let media = try await fixture.makeMedia(templates: 2)
        let app = buildApplication(fixture.config, studio: fixture.studio)
        try await app.test(.live) { client in
            let port = try #require(client.port)
            try await client.execute(uri: "/api/inputs/audio?name=narration.wav", method: .post, body: try ByteBuffer(file: media.audio)) { #expect($0.status == .created) }
            for (index, video) in media.videos.enumerated() {
                try await client.execute(uri: "/api/inputs/videos?name=t\(index).mp4", method: .post, body: try ByteBuffer(file: video)) { #expect($0.status == .created) }
            }
            try await client.execute(uri: "/api/settings", method: .put, body: ByteBuffer(string: "{\"engine\": \"test\", \"engineParams\": {\"delay\": 0.02}}")) { #expect($0.status == .ok) }

            let messages = Shared<[String]>([])
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await WebSocketClient.connect(url: "ws://127.0.0.1:\(port)/ws", logger: Logger(label: "test")) { inbound, _, _ in
                        for try await message in inbound.messages(maxSize: 1 << 22) {
                            guard case .text(let text) = message else { continue }
                            messages.withLock { $0.append(text) }
                            if text.contains("\"event\":\"batch_finished\"") { break }
                        }
                    }
                }
                // Start once the page has its snapshot, as a browser would.
                let deadline = Date().addingTimeInterval(20)
                while messages.withLock({ $0.isEmpty }) {
                    guard Date() < deadline else { throw CancellationError() }
                    try await Task.sleep(for: .milliseconds(20))
                }
                try await client.execute(uri: "/api/batch/start", method: .post) { #expect($0.status == .accepted) }
                try await client.execute(uri: "/api/batch/start", method: .post) { #expect($0.status == .conflict) }
                try await group.next()
                group.cancelAll()
            }
            let received = messages.withLock { $0 }
            #expect(received.first?.hasPrefix("{\"type\":\"snapshot\"") == true)
            for event in ["batch_started", "item_started", "item_progress", "item_succeeded", "batch_finished"] {
                #expect(received.contains { $0.contains("\"event\":\"\(event)\"") }, "\(event)")
            }

            var output = ""
            try await client.execute(uri: "/api/state", method: .get) { response in
                let items = json(response.body)["items"] as? [[String: Any]] ?? []
                #expect(items.count == 2 && items.allSatisfy { $0["status"] as? String == "success" })
                output = items.first?["output"] as? String ?? ""
            }
            let size = try FileManager.default.attributesOfItem(atPath: fixture.config.workspace + "/outputs/" + output)[.size] as? Int ?? 0
            try await client.execute(uri: "/api/outputs/\(output)", method: .get, headers: [.range: "bytes=100-199"]) { response in
                #expect(response.status == .partialContent)
                #expect(response.headers[.contentRange] == "bytes 100-199/\(size)")
                #expect(response.body.readableBytes == 100)
            }
            try await client.execute(uri: "/api/outputs/\(output)", method: .get, headers: [.range: "bytes=\(size + 10)-"]) { #expect($0.status == .rangeNotSatisfiable) }
            let zipPath = fixture.folder + "/all.zip"
            try await client.execute(uri: "/api/outputs.zip", method: .get) { response in
                #expect(response.headers[.contentType] == "application/zip")
                try Data(buffer: response.body).write(to: URL(fileURLWithPath: zipPath))
            }
            let check = try await Tool.run("python3", ["-c", "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; print(len(z.namelist()))", zipPath])
            #expect(check.exitCode == 0 && check.output.trimmingCharacters(in: .whitespacesAndNewlines) == "2", "\(check.error)")
            try await client.execute(uri: "/api/log?lines=3", method: .get) { response in
                #expect((json(response.body)["lines"] as? [String])?.last?.contains("batch_finished") == true)
            }

            // face2face: queued behind nothing, rendered, still answered after it finished.
            try await client.execute(uri: "/easy/submit", method: .post,
                                     body: ByteBuffer(string: "{\"audio_url\": \"\(media.audio)\", \"video_url\": \"\(media.videos[0])\", \"code\": \"job-1\", \"chaofen\": 0, \"watermark_switch\": 0, \"digital_auth\": 0, \"pn\": 1}")) { response in
                #expect(json(response.body)["code"] as? Int == 10000)
            }
            var status = 0
            for _ in 0..<200 where status != 2 {
                try await Task.sleep(for: .milliseconds(100))
                try await client.execute(uri: "/easy/query?code=job-1", method: .get) { response in
                    status = (json(response.body)["data"] as? [String: Any])?["status"] as? Int ?? 0
                }
            }
            #expect(status == 2)
            for _ in 0..<2 {
                try await client.execute(uri: "/easy/query?code=job-1", method: .get) { response in
                    let data = json(response.body)["data"] as? [String: Any]
                    #expect(data?["status"] as? Int == 2 && data?["progress"] as? Int == 100)
                    #expect(FileManager.default.fileExists(atPath: data?["result"] as? String ?? "/nonexistent"))
                }
            }
        }
    }

    @Test func aForeignHostAndAMissingTokenAreRefusedOverTheSocket() async throws {
        let fixture = try StudioFixture(token: "live-token-12345", port: 7860)
        let app = buildApplication(fixture.config, studio: fixture.studio)
        try await app.test(.live) { client in
            let port = try #require(client.port)
            // A real request line with a foreign Host header (DNS rebinding).
            let foreign = try await Tool.run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: evil.example",
                                                      "-H", "Authorization: Bearer live-token-12345", "http://127.0.0.1:\(port)/api/state"])
            #expect(foreign.output == "403")
            let local = try await Tool.run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer live-token-12345",
                                                    "http://localhost:\(port)/api/state"])
            #expect(local.output == "200")
            try await client.execute(uri: "/api/state", method: .get, headers: [.authorization: "Bearer live-token-12345"]) { #expect($0.status == .ok) }
            await #expect(throws: (any Error).self) {
                try await WebSocketClient.connect(url: "ws://127.0.0.1:\(port)/ws", logger: Logger(label: "test")) { _, _, _ in }
            }
            let opened = Shared(false)
            try await WebSocketClient.connect(url: "ws://127.0.0.1:\(port)/ws?token=live-token-12345", logger: Logger(label: "test")) { inbound, _, _ in
                for try await _ in inbound.messages(maxSize: 1 << 22) {
                    opened.withLock { $0 = true }
                    break
                }
            }
            #expect(opened.withLock { $0 })
        }
    }

    @Test func malformedRequestsAreAnsweredAndClosed() async throws {
        // Before StudioChannel, such a connection stayed open, unanswered, for good.
        let fixture = try StudioFixture()
        let app = buildApplication(fixture.config, studio: fixture.studio)
        try await app.test(.live) { client in
            let port = try #require(client.port)
            let script = """
            import socket, sys
            requests = [b"POST /api/inputs/videos?name=a.mp4 HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nContent-Length: -3\\r\\n\\r\\n",
                        b"GARBAGE\\r\\n\\r\\n", b"GET / HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nno colon here\\r\\n\\r\\n"]
            for request in requests:
                connection = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
                connection.sendall(request)
                answer = b""
                while chunk := connection.recv(4096):
                    answer += chunk
                print(answer.split(b"\\r\\n")[0].decode())
            """
            let result = try await Tool.run("python3", ["-c", script, String(port)])
            #expect(result.output.split(separator: "\n") == Array(repeating: "HTTP/1.1 400 Bad Request", count: 3), "\(result.output)\(result.error)")
        }
    }

    @Test func anUploadThatExpectsContinueIsToldToGoOn() async throws {
        // curl sends `Expect: 100-continue` with bodies over 1 MiB; unanswered, it waited a
        // second before every upload (found by Benchmarks/studio.py).
        let fixture = try StudioFixture()
        let app = buildApplication(fixture.config, studio: fixture.studio)
        try await app.test(.live) { client in
            let port = try #require(client.port)
            let script = """
            import socket, sys
            connection = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
            body = b"x" * 2048
            connection.sendall(b"POST /api/inputs/videos?name=a.mp4 HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n"
                               b"Expect: 100-continue\\r\\nContent-Length: 2048\\r\\n\\r\\n")
            interim = connection.recv(4096)  # the body is not sent yet: only the server can speak
            print(interim.split(b"\\r\\n")[0].decode())
            connection.sendall(body)
            final = b""
            while b"\\r\\n\\r\\n" not in final and (chunk := connection.recv(4096)):
                final += chunk
            print(final.split(b"\\r\\n")[0].decode())
            """
            let result = try await Tool.run("python3", ["-c", script, String(port)])
            let lines = result.output.split(separator: "\n")
            #expect(lines.first == "HTTP/1.1 100 Continue", "\(result.output)\(result.error)")
            #expect(lines.count == 2 && lines[1].hasPrefix("HTTP/1.1 ") && !lines[1].hasPrefix("HTTP/1.1 100"), "\(result.output)\(result.error)")
        }
    }
}

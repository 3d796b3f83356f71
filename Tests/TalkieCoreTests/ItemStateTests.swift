import Testing
@testable import TalkieCore

/// Every (status, event) pair: the legal ones give the expected state, every other one throws.
@Suite struct ItemStateTests {
    static let error = ItemError(kind: .transient, message: "boom")
    static let events: [ItemEvent] = [
        .start, .succeed(output: "a.mp4", settingsFingerprint: "f"), .fail(error), .stop,
        .interrupted(maxAttempts: 3), .retryAutomatically, .retryByUser, .rerender(reason: "r"), .skip,
    ]

    static func state(_ status: ItemStatus, attempts: Int = 1) -> ItemState {
        ItemState(status: status, attempts: attempts, lastError: status == .failed ? error : nil,
                  output: status == .success ? "old.mp4" : nil, settingsFingerprint: status == .success ? "old" : nil)
    }

    /// The expected status after an event, or nil where the transition is illegal.
    static func expected(_ status: ItemStatus, _ event: ItemEvent) -> ItemStatus? {
        switch (status, event) {
        case (.pending, .start): .running
        case (.running, .succeed): .success
        case (.running, .fail): .failed
        case (.running, .stop): .pending
        case (.running, .interrupted): .pending
        case (.failed, .retryAutomatically), (.failed, .retryByUser): .pending
        case (.success, .rerender): .pending
        case (.pending, .skip), (.running, .skip): .failed
        default: nil
        }
    }

    @Test(arguments: ItemStatus.allCases)
    func everyEventFromEveryStatus(status: ItemStatus) throws {
        for event in Self.events {
            let before = Self.state(status)
            if let expected = Self.expected(status, event) {
                let after = try before.applying(event)
                #expect(after.status == expected, "\(status) + \(event)")
            } else {
                #expect(throws: IllegalTransition(from: status, event: event)) { try before.applying(event) }
            }
        }
    }

    @Test func attemptsAreCountedAtStartAndRefundedOnStop() throws {
        var state = ItemState()
        try state.apply(.start)
        #expect(state.attempts == 1)
        try state.apply(.stop)
        #expect(state.attempts == 0 && state.status == .pending)
    }

    @Test func successRecordsOutputAndFingerprintAndClearsError() throws {
        var state = Self.state(.failed)
        try state.apply(.retryAutomatically)
        try state.apply(.start)
        try state.apply(.succeed(output: "a.mp4", settingsFingerprint: "f1"))
        #expect(state.output == "a.mp4" && state.settingsFingerprint == "f1" && state.lastError == nil && state.attempts == 2)
    }

    @Test func interruptedKeepsTheAttemptAndFailsPastTheCap() throws {
        var state = ItemState()
        try state.apply(.start)
        try state.apply(.interrupted(maxAttempts: 2))
        #expect(state.status == .pending && state.attempts == 1)
        try state.apply(.start)
        try state.apply(.interrupted(maxAttempts: 2))
        #expect(state.status == .failed && state.lastError?.kind == .transient)
    }

    @Test func userRetryStartsAttemptsAgainAutomaticRetryKeepsThem() throws {
        let failed = Self.state(.failed, attempts: 3)
        #expect(try failed.applying(.retryByUser).attempts == 0)
        #expect(try failed.applying(.retryAutomatically).attempts == 3)
    }
}

@Suite struct KeyAndSettingsTests {
    @Test func keysRoundTripThroughText() {
        let key = ItemKey(video: ContentHash(high: 1, low: 0xabc), audio: ContentHash(high: .max, low: 2))
        #expect(ItemKey(id: key.id) == key)
        #expect(key.id.count == 65)
        #expect(ContentHash(hex: "xyz") == nil)
        #expect(ItemKey(id: "abc-def") == nil)
    }

    @Test func fingerprintIsStableAndSensitive() {
        let base = RenderSettings(engine: "classic", engineParams: ["b": .number(1), "a": .string("x")], denoise: 0.2, tempo: 1)
        let same = RenderSettings(engine: "classic", engineParams: ["a": .string("x"), "b": .number(1)], denoise: 0.2, tempo: 1)
        #expect(base.fingerprint == same.fingerprint)
        #expect(base.fingerprint.count == 16)
        var faster = base
        faster.tempo = 1.1
        #expect(faster.fingerprint != base.fingerprint)
    }

    @Test func overridesKeepWhatIsNotSetAndDropOtherEnginesParams() {
        let base = RenderSettings(engine: "classic", engineParams: ["mouth": .number(1)], denoise: 0.3, tempo: 1.2)
        #expect(SettingsOverrides().applied(to: base) == base)
        let tempo = SettingsOverrides(tempo: 0.9).applied(to: base)
        #expect(tempo.tempo == 0.9 && tempo.denoise == 0.3 && tempo.engineParams["mouth"] == .number(1))
        let other = SettingsOverrides(engine: "test").applied(to: base)
        #expect(other.engine == "test" && other.engineParams.isEmpty)
    }

    @Test func settingsProblemsNameTheValue() {
        #expect(RenderSettings().problems().isEmpty)
        #expect(RenderSettings(denoise: 2).problems().first?.contains("denoise") == true)
        #expect(RenderSettings(tempo: 3).problems().first?.contains("tempo") == true)
        #expect(RenderSettings(engine: "../x").problems().count == 1)
    }

    @Test func retryPolicyRetriesOnlyTransientFailuresUpToTheCap() {
        let policy = RetryPolicy(maxAttempts: 3, initialDelay: 1, multiplier: 2, maxDelay: 3)
        #expect(policy.shouldRetry(.transient, attempts: 2))
        #expect(!policy.shouldRetry(.transient, attempts: 3))
        #expect(!policy.shouldRetry(.input, attempts: 1))
        #expect(policy.delay(afterAttempt: 1) == 1)
        #expect(policy.delay(afterAttempt: 2) == 2)
        #expect(policy.delay(afterAttempt: 5) == 3)
    }

    @Test func eventsBecomeJSONLinesWithTime() {
        let line = BatchEvent.warning("hi \"there\"").jsonLine(at: .init(timeIntervalSince1970: 0))
        #expect(line == "{\"time\":\"1970-01-01T00:00:00.000Z\",\"event\":\"warning\",\"message\":\"hi \\\"there\\\"\"}")
    }
}

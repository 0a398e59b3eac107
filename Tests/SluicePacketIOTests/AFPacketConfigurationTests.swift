// Path: Tests/SluicePacketIOTests/AFPacketConfigurationTests.swift — ring settings are checked before
// any system call, each bad value a typed error naming it. No root needed.
import CShims
import Glibc
import SluiceCore
import SluicePacketIO
import Testing

@Suite struct AFPacketConfigurationTests {
    static let page = AFPacketLimits.pageSizeBytes

    @Test func defaultsAreValid() throws {
        try AFPacketRXConfiguration(interface: "eth0").validate()
        try AFPacketTXConfiguration(interface: "eth0").validate()
        try AFPacketRXConfiguration(interface: "x", blockSizeBytes: Self.page, blockCount: 1,
                                    frameSizeBytes: AFPacketLimits.rxFrameSizeMin, blockTimeoutMs: 0).validate()
    }

    @Test(arguments: ["", "sixteen-chars-xx", "a/b", "a:b", "a b", ".", "..", "tab\there"])
    func badInterfaceNamesAreTypedErrors(name: String) {
        #expect(throws: AFPacketError.invalidInterfaceName(name)) {
            try AFPacketRXConfiguration(interface: name).validate()
        }
        #expect(throws: AFPacketError.invalidInterfaceName(name)) {
            try AFPacketTXConfiguration(interface: name).validate()
        }
    }

    @Test(arguments: [0, 1000, page + 1, page / 2, AFPacketLimits.rxBlockSizeMax * 2, -page])
    func rxBlockSizeMustBeWholePagesWithinBound(size: Int) {
        #expect(throws: AFPacketError.invalidBlockSize(size, pageSizeBytes: Self.page, max: AFPacketLimits.rxBlockSizeMax)) {
            try AFPacketRXConfiguration(interface: "eth0", blockSizeBytes: size, frameSizeBytes: 128).validate()
        }
    }

    @Test(arguments: [0, -1, AFPacketLimits.rxBlockCountMax + 1])
    func rxBlockCountIsBounded(count: Int) {
        #expect(throws: AFPacketError.invalidBlockCount(count, max: AFPacketLimits.rxBlockCountMax)) {
            try AFPacketRXConfiguration(interface: "eth0", blockCount: count).validate()
        }
    }

    @Test(arguments: [0, 64, 127, 2050, 1 << 21])
    func rxFrameSizeIsAlignedAndFitsABlock(size: Int) {
        let block = 1 << 20
        #expect(throws: AFPacketError.invalidFrameSize(size, min: AFPacketLimits.rxFrameSizeMin, max: block)) {
            try AFPacketRXConfiguration(interface: "eth0", blockSizeBytes: block, frameSizeBytes: size).validate()
        }
    }

    @Test(arguments: [-1, AFPacketLimits.rxBlockTimeoutMsMax + 1])
    func rxBlockTimeoutIsBounded(timeout: Int) {
        #expect(throws: AFPacketError.invalidBlockTimeout(milliseconds: timeout, max: AFPacketLimits.rxBlockTimeoutMsMax)) {
            try AFPacketRXConfiguration(interface: "eth0", blockTimeoutMs: timeout).validate()
        }
    }

    @Test func rxRingLargerThanTheMappingBoundIsRefused() {
        let blockSize = AFPacketLimits.rxBlockSizeMax
        let count = AFPacketLimits.ringSizeMax / blockSize + 1
        #expect(throws: AFPacketError.ringTooLarge(bytes: blockSize * count, max: AFPacketLimits.ringSizeMax)) {
            try AFPacketRXConfiguration(interface: "eth0", blockSizeBytes: blockSize, blockCount: count).validate()
        }
    }

    @Test(arguments: [0, 64, 100, 1536, 3000, AFPacketLimits.txFrameSizeMax * 2])
    func txFrameSizeIsAPowerOfTwoWithinBounds(size: Int) {
        #expect(throws: AFPacketError.invalidFrameSize(size, min: AFPacketLimits.txFrameSizeMin,
                                                       max: AFPacketLimits.txFrameSizeMax)) {
            try AFPacketTXConfiguration(interface: "eth0", frameSizeBytes: size).validate()
        }
    }

    @Test(arguments: [0, 1, 4, 1000, 4097, AFPacketLimits.txFrameCountMax * 2])
    func txFrameCountIsAPowerOfTwoWithinBounds(count: Int) {
        let configuration = AFPacketTXConfiguration(interface: "eth0", frameSizeBytes: 2048, frameCount: count)
        let countMin = max(8, configuration.blockSizeBytes / 2048)
        #expect(throws: AFPacketError.invalidFrameCount(count, min: countMin, max: AFPacketLimits.txFrameCountMax)) {
            try configuration.validate()
        }
    }

    @Test func txRingMustFillAWholeBlock() {
        // 128-byte frames, 32 to a page: 16 frames would leave the only block half empty.
        let configuration = AFPacketTXConfiguration(interface: "eth0", frameSizeBytes: 128, frameCount: 16)
        let countMin = Self.page / 128
        #expect(throws: AFPacketError.invalidFrameCount(16, min: countMin, max: AFPacketLimits.txFrameCountMax)) {
            try configuration.validate()
        }
    }

    @Test func txRingLargerThanTheMappingBoundIsRefused() {
        let size = AFPacketLimits.txFrameSizeMax
        let count = AFPacketLimits.txFrameCountMax
        #expect(throws: AFPacketError.ringTooLarge(bytes: size * count, max: AFPacketLimits.ringSizeMax)) {
            try AFPacketTXConfiguration(interface: "eth0", frameSizeBytes: size, frameCount: count).validate()
        }
    }

    @Test func cTwinsMatchTheSwiftBounds() {
        #expect(AFPacketLimits.txDataOffsetBytes == 32)
        #expect(AFPacketLimits.ethernetHeaderBytes == 14)
        #expect(MemoryLayout<sluice_afpacket_v2_frame_header>.size == 32)
        #expect(AFPacketTXConfiguration(interface: "x").frameLengthMax == 2048 - 32)
    }

    /// Validation comes before the interface lookup and the socket, so neither root nor a real
    /// interface is needed to see these errors; a well-formed name that does not exist is its own.
    @Test func missingInterfaceIsATypedError() throws {
        let pool = try BufferPool(bufferCount: 8, bufferSizeBytes: 2048)
        let name = "sluice-none\(getpid() % 1000)"
        #expect(throws: AFPacketError.interfaceNotFound(name)) {
            _ = try AFPacketReceiver(configuration: AFPacketRXConfiguration(interface: name), pool: pool)
        }
        #expect(throws: AFPacketError.interfaceNotFound(name)) {
            _ = try AFPacketTransmitter(configuration: AFPacketTXConfiguration(interface: name), pool: pool)
        }
        #expect(throws: AFPacketError.invalidBlockCount(0, max: AFPacketLimits.rxBlockCountMax)) {
            _ = try AFPacketReceiver(configuration: AFPacketRXConfiguration(interface: name, blockCount: 0), pool: pool)
        }
    }
}

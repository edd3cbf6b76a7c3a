//! A program's instructions written out as the verifier's log writes them, and the golden
//! listings (`src/bpf/golden/*.txt`) that each program's test holds its assembly to, so that any
//! change to a program shows as a diff. `CWLAB_BLESS=1` writes them anew.

use std::fmt;

use super::{op, Helper, Insn, Size};

// Masks of an opcode's class, (ALU and jump) operation and source, and (load and store) mode.
const CLASS: u8 = 0x07;
const OPERATION: u8 = 0xf0;
const SOURCE: u8 = 0x08;
const MODE: u8 = 0xe0;

/// A program's instructions, one a line: the index, the eight bytes the kernel reads and the
/// instruction as the verifier's log writes it (a jump also says where it lands).
pub(crate) fn listing(insns: &[Insn]) -> String {
    let wide = op::LD | op::IMM | Size::DW.code();
    let mut out = String::new();
    let mut upper_half = false;
    for (at, insn) in insns.iter().enumerate() {
        let bytes: Vec<String> =
            insn.raw().to_le_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let text = if upper_half {
            format!("(the upper half of the load above: {})", insn.imm)
        } else {
            Text { insn: *insn, at }.to_string()
        };
        upper_half = !upper_half && insn.code == wide;
        out.push_str(&format!("{at:3}: {}  {text}\n", bytes.join(" ")));
    }
    out
}

/// Holds `insns`, listed under `header`, to the golden file `src/bpf/golden/NAME.txt`; writes it
/// instead when `CWLAB_BLESS=1`.
pub(crate) fn golden(name: &str, header: &str, insns: &[Insn]) {
    let path = format!("{}/src/bpf/golden/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    let now = format!("{header}\n{}", listing(insns));
    if std::env::var("CWLAB_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &now).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
        return;
    }
    let then = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("cannot read {path} ({e}); CWLAB_BLESS=1 writes it from:\n{now}")
    });
    if now != then {
        let first = now.lines().zip(then.lines()).position(|(a, b)| a != b);
        let line = first.unwrap_or(now.lines().count().min(then.lines().count()));
        panic!(
            "the program {name} no longer assembles to {path} (first difference on line {}); \
             if the change is meant, CWLAB_BLESS=1 writes it anew. Now:\n{now}",
            line + 1
        );
    }
}

/// One instruction in the verifier's words.
struct Text {
    insn: Insn,
    at: usize,
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Insn { code, regs, off, imm } = self.insn;
        let (dst, src) = (regs & 0x0f, regs >> 4);
        let size = c_type(code);
        match (code & CLASS, code & OPERATION, code & SOURCE) {
            (op::ALU64, operation, source) => {
                let sign = match operation {
                    op::MOV => "",
                    op::ADD => "+",
                    op::AND => "&",
                    op::RSH => ">>",
                    _ => return write!(f, "(alu64 operation {operation:#04x})"),
                };
                match source {
                    op::X => write!(f, "r{dst} {sign}= r{src}"),
                    _ => write!(f, "r{dst} {sign}= {imm}"),
                }
            }
            (op::JMP, op::CALL, _) => write!(f, "call {}#{imm}", helper(imm)),
            (op::JMP, op::EXIT, _) => write!(f, "exit"),
            (op::JMP, operation, _) => {
                let cmp = match operation {
                    op::JEQ => "==",
                    op::JNE => "!=",
                    _ => return write!(f, "(jump operation {operation:#04x})"),
                };
                let to = self.at as i64 + 1 + i64::from(off);
                write!(f, "if r{dst} {cmp} {imm:#x} goto pc{off:+} (to {to})")
            }
            _ => match (code & CLASS, code & MODE) {
                (op::LDX, op::MEM) => write!(f, "r{dst} = *({size} *)(r{src} {off:+})"),
                (op::STX, op::MEM) => write!(f, "*({size} *)(r{dst} {off:+}) = r{src}"),
                (op::ST, op::MEM) => write!(f, "*({size} *)(r{dst} {off:+}) = {imm}"),
                (op::STX, op::ATOMIC) if imm == i32::from(op::ADD) => {
                    write!(f, "lock *({size} *)(r{dst} {off:+}) += r{src}")
                }
                (op::LD, op::IMM) if src == op::PSEUDO_MAP_FD => {
                    write!(f, "r{dst} = map[fd:{imm}]")
                }
                _ => write!(f, "(opcode {code:#04x})"),
            },
        }
    }
}

/// The C type a load or a store of `code` moves.
fn c_type(code: u8) -> &'static str {
    [Size::B, Size::H, Size::W, Size::DW].into_iter().find(|s| code & 0x18 == s.code()).map_or(
        "?",
        |s| match s {
            Size::B => "u8",
            Size::H => "u16",
            Size::W => "u32",
            Size::DW => "u64",
        },
    )
}

/// A helper's name, from its number.
fn helper(id: i32) -> &'static str {
    [
        (Helper::MapLookupElem, "bpf_map_lookup_elem"),
        (Helper::KtimeGetNs, "bpf_ktime_get_ns"),
        (Helper::GetSocketCookie, "bpf_get_socket_cookie"),
        (Helper::SeqWrite, "bpf_seq_write"),
        (Helper::RingbufOutput, "bpf_ringbuf_output"),
    ]
    .into_iter()
    .find(|(h, _)| *h as i32 == id)
    .map_or("?", |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::listing;

    #[test]
    fn the_listing_reads_as_the_verifier_writes() {
        let mut a = Asm::default();
        a.mov(R9, R1);
        a.load(Size::DW, R6, R9, 24);
        a.jeq_imm(R6, 0, "out");
        a.store(Size::W, FP, -16, R2);
        a.store_imm(Size::DW, FP, -8, 0);
        a.add_imm(R2, -16);
        a.and_imm(R2, 0o170_000);
        a.load_map(R1, 3);
        a.call(Helper::SeqWrite);
        a.atomic_add(Size::DW, R0, 0, R1);
        a.label("out");
        a.exit();
        let want = "  0: bf 19 00 00 00 00 00 00  r9 = r1
  1: 79 96 18 00 00 00 00 00  r6 = *(u64 *)(r9 +24)
  2: 15 06 08 00 00 00 00 00  if r6 == 0x0 goto pc+8 (to 11)
  3: 63 2a f0 ff 00 00 00 00  *(u32 *)(r10 -16) = r2
  4: 7a 0a f8 ff 00 00 00 00  *(u64 *)(r10 -8) = 0
  5: 07 02 00 00 f0 ff ff ff  r2 += -16
  6: 57 02 00 00 00 f0 00 00  r2 &= 61440
  7: 18 11 00 00 03 00 00 00  r1 = map[fd:3]
  8: 00 00 00 00 00 00 00 00  (the upper half of the load above: 0)
  9: 85 00 00 00 7f 00 00 00  call bpf_seq_write#127
 10: db 10 00 00 00 00 00 00  lock *(u64 *)(r0 +0) += r1
 11: 95 00 00 00 00 00 00 00  exit
";
        assert_eq!(listing(&a.finish().unwrap()), want);
    }
}

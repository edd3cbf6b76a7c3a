//! The running kernel's BTF (`/sys/kernel/btf/vmlinux`), read on demand: where the members of
//! its structs lie, and the ids of the functions and typedefs a program attaches to. So one
//! binary fits every kernel that has BTF (`CONFIG_DEBUG_INFO_BTF`).
//!
//! # References
//! Documentation/bpf/btf.rst (the format); include/uapi/linux/btf.h (`struct btf_header`,
//! `struct btf_type`, `struct btf_member`, `BTF_KIND_*`).

use std::io::{self, Read};
use std::mem::{offset_of, size_of};

/// Where the kernel shows its own BTF.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// `f` with the running kernel's BTF.
pub(crate) fn with_kernel_btf<T>(f: impl FnOnce(&Btf) -> io::Result<T>) -> io::Result<T> {
    let blob = Blob::of(KERNEL_BTF)?;
    let btf =
        Btf::parse(blob.bytes()).ok_or_else(|| io::Error::other("cannot read the kernel's BTF"))?;
    f(&btf)
}

/// Where members lie in a few of the kernel's structs, the structs found in one pass over its
/// BTF.
pub(crate) struct Fields<'b, 'a> {
    btf: &'b Btf<'a>,
    names: &'b [&'b str],
    ids: Vec<Option<u32>>,
}

impl<'b, 'a> Fields<'b, 'a> {
    pub(crate) fn of(btf: &'b Btf<'a>, names: &'b [&'b str]) -> Fields<'b, 'a> {
        Fields { btf, names, ids: btf.all_named(Kind::Struct, names) }
    }

    /// The byte offset of a path of members (`"ns.inum"`) in the struct `name`, one of those
    /// asked for, where an instruction's 16-bit offset can reach it.
    pub(crate) fn at(&self, name: &str, path: &str) -> Option<i16> {
        let id = self.ids[self.names.iter().position(|n| *n == name)?]?;
        i16::try_from(self.btf.offset(id, path)?).ok()
    }
}

/// The kernel's BTF: mapped where the kernel lets it be (6.16 and later), else read.
enum Blob {
    Mapped { at: *mut std::ffi::c_void, len: usize },
    Read(Vec<u8>),
}

impl Blob {
    fn of(path: &str) -> io::Result<Blob> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len() as usize;
        // SAFETY: a private read-only mapping of `len` bytes of an open file; it is unmapped in
        // Drop and only read through `bytes` while it lives.
        let at = unsafe {
            use rustix::mm::{mmap, MapFlags, ProtFlags};
            mmap(std::ptr::null_mut(), len, ProtFlags::READ, MapFlags::PRIVATE, &f, 0)
        };
        if let (Ok(at), true) = (at, len > 0) {
            return Ok(Blob::Mapped { at, len });
        }
        let mut v = Vec::with_capacity(len + 1);
        f.read_to_end(&mut v)?;
        Ok(Blob::Read(v))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: the mapping is `len` readable bytes for as long as `self` lives.
            Blob::Mapped { at, len } => unsafe {
                std::slice::from_raw_parts(at.cast::<u8>(), *len)
            },
            Blob::Read(v) => v,
        }
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        if let Blob::Mapped { at, len } = self {
            // SAFETY: unmaps exactly the mapping made in `of`, which nothing refers to any more.
            let _ = unsafe { rustix::mm::munmap(*at, *len) };
        }
    }
}

/// The start of a BTF blob (`struct btf_header`); the offsets of the types and the strings count
/// from its end.
#[repr(C)]
#[allow(dead_code)] // read by offset, field by field
struct Header {
    magic: u16,
    version: u8,
    flags: u8,
    hdr_len: u32,
    type_off: u32,
    type_len: u32,
    str_off: u32,
    str_len: u32,
}

/// `Header::magic`, 0xeb9f, as its bytes lie in a little-endian blob.
const MAGIC: [u8; 2] = [0x9f, 0xeb];

/// The head of every type's record (`struct btf_type`); what follows it depends on its kind.
#[repr(C)]
#[allow(dead_code)] // read by offset, field by field
struct BtfType {
    name_off: u32,
    /// The kind (bits 24–28), the kind flag (bit 31) and the count of what follows (bits 0–15).
    info: u32,
    size_or_type: u32,
}

/// One member of a struct or union (`struct btf_member`), after its type's head.
#[repr(C)]
#[allow(dead_code)] // read by offset, field by field
struct BtfMember {
    name_off: u32,
    type_id: u32,
    /// The bit offset; with the kind flag, the bitfield's size in the top 8 bits.
    offset: u32,
}

/// The bit offset in a `BtfMember::offset` when the struct's kind flag says it holds a
/// bitfield's size too (`BTF_MEMBER_BIT_OFFSET`).
const MEMBER_BIT_OFFSET: u32 = 0x00ff_ffff;

/// A BTF kind (`BTF_KIND_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int = 1,
    Ptr = 2,
    Array = 3,
    Struct = 4,
    Union = 5,
    Enum = 6,
    Fwd = 7,
    Typedef = 8,
    Volatile = 9,
    Const = 10,
    Restrict = 11,
    Func = 12,
    FuncProto = 13,
    Var = 14,
    Datasec = 15,
    Float = 16,
    DeclTag = 17,
    TypeTag = 18,
    Enum64 = 19,
}

impl Kind {
    const ALL: [Kind; 19] = [
        Kind::Int,
        Kind::Ptr,
        Kind::Array,
        Kind::Struct,
        Kind::Union,
        Kind::Enum,
        Kind::Fwd,
        Kind::Typedef,
        Kind::Volatile,
        Kind::Const,
        Kind::Restrict,
        Kind::Func,
        Kind::FuncProto,
        Kind::Var,
        Kind::Datasec,
        Kind::Float,
        Kind::DeclTag,
        Kind::TypeTag,
        Kind::Enum64,
    ];

    /// The kind numbered `n` (`ALL` is in their order, from 1).
    fn of(n: u32) -> Option<Kind> {
        Kind::ALL.get((n as usize).checked_sub(1)?).copied()
    }

    /// How many bytes follow a type's head for this kind, with `vlen` entries.
    fn trailing(self, vlen: usize) -> usize {
        // The sizes of the records that follow (include/uapi/linux/btf.h).
        const INT_ENCODING: usize = 4; // a u32: the encoding, offset and bits of an INT
        const BTF_ARRAY: usize = 12;
        const BTF_ENUM: usize = 8;
        const BTF_PARAM: usize = 8;
        const BTF_VAR: usize = 4;
        const BTF_VAR_SECINFO: usize = 12;
        const BTF_DECL_TAG: usize = 4;
        const BTF_ENUM64: usize = 12;
        match self {
            Kind::Int => INT_ENCODING,
            Kind::Array => BTF_ARRAY,
            Kind::Struct | Kind::Union => vlen * size_of::<BtfMember>(),
            Kind::Enum => vlen * BTF_ENUM,
            Kind::FuncProto => vlen * BTF_PARAM,
            Kind::Var => BTF_VAR,
            Kind::Datasec => vlen * BTF_VAR_SECINFO,
            Kind::DeclTag => BTF_DECL_TAG,
            Kind::Enum64 => vlen * BTF_ENUM64,
            Kind::Ptr
            | Kind::Fwd
            | Kind::Typedef
            | Kind::Volatile
            | Kind::Const
            | Kind::Restrict
            | Kind::Func
            | Kind::Float
            | Kind::TypeTag => 0,
        }
    }

    /// Whether a type of this kind only names or qualifies the type it refers to.
    fn is_alias(self) -> bool {
        matches!(
            self,
            Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag
        )
    }
}

/// A type's head, its `info` unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    /// Its kind (`None`: one this reader does not know, with nothing after its head).
    pub(crate) kind: Option<Kind>,
    /// Its name, an offset into the strings.
    pub(crate) name_off: u32,
    /// Its size in bytes, or the type it refers to (a typedef's, a pointer's, a modifier's).
    pub(crate) size_or_type: u32,
    /// How many entries follow its head (a struct's members).
    pub(crate) vlen: usize,
    /// The kind flag: for a struct, that its members' offsets hold bitfield sizes too.
    pub(crate) kind_flag: bool,
}

impl Head {
    /// The head with `info` unpacked as `BTF_INFO_KIND`, `BTF_INFO_VLEN` and `BTF_INFO_KFLAG`
    /// do.
    fn of(name_off: u32, info: u32, size_or_type: u32) -> Head {
        const KIND_SHIFT: u32 = 24;
        const KIND_MASK: u32 = 0x1f;
        const VLEN_MASK: u32 = 0xffff;
        const KFLAG_SHIFT: u32 = 31;
        Head {
            kind: Kind::of((info >> KIND_SHIFT) & KIND_MASK),
            name_off,
            size_or_type,
            vlen: (info & VLEN_MASK) as usize,
            kind_flag: info >> KFLAG_SHIFT == 1,
        }
    }
}

/// A member found in a struct: where it lies and its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    /// Its offset in bits from the start of the outermost struct asked about.
    bit_offset: u32,
    type_id: u32,
}

/// A BTF blob, read on demand: where each type's record starts, and the strings.
pub(crate) struct Btf<'a> {
    blob: &'a [u8],
    strings: &'a [u8],
    /// The byte offset of each type's record, by type id (id 0, void, has none).
    starts: Vec<u32>,
}

impl<'a> Btf<'a> {
    pub(crate) fn parse(b: &'a [u8]) -> Option<Btf<'a>> {
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
        };
        let header = |field: usize| u32_at(field).map(|v| v as usize);
        if b.get(0..2)? != MAGIC {
            return None;
        }
        let hdr = header(offset_of!(Header, hdr_len))?;
        let type_off = header(offset_of!(Header, type_off))?;
        let type_len = header(offset_of!(Header, type_len))?;
        let str_off = header(offset_of!(Header, str_off))?;
        let str_len = header(offset_of!(Header, str_len))?;
        let strings = b.get(hdr + str_off..hdr + str_off + str_len)?;
        let mut starts = vec![0];
        let (mut at, end) = (hdr + type_off, (hdr + type_off + type_len).min(b.len()));
        while at + size_of::<BtfType>() <= end {
            starts.push(at as u32);
            let head = Head::of(0, u32_at(at + offset_of!(BtfType, info))?, 0);
            at += size_of::<BtfType>() + head.kind.map_or(0, |k| k.trailing(head.vlen));
        }
        Some(Btf { blob: b, strings, starts })
    }

    fn u32_at(&self, at: usize) -> u32 {
        self.blob.get(at..at + 4).map_or(0, |x| u32::from_le_bytes(x.try_into().expect("4 bytes")))
    }

    /// The head of type `id`.
    pub(crate) fn head(&self, id: u32) -> Option<Head> {
        let at = *self.starts.get(id as usize).filter(|_| id > 0)? as usize;
        Some(Head::of(
            self.u32_at(at + offset_of!(BtfType, name_off)),
            self.u32_at(at + offset_of!(BtfType, info)),
            self.u32_at(at + offset_of!(BtfType, size_or_type)),
        ))
    }

    fn name(&self, off: u32) -> &[u8] {
        let s = &self.strings[(off as usize).min(self.strings.len())..];
        &s[..s.iter().position(|c| *c == 0).unwrap_or(s.len())]
    }

    /// A type id with its modifiers and typedefs peeled.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.head(id) {
                Some(Head { kind: Some(k), size_or_type: next, .. }) if k.is_alias() => id = next,
                _ => break,
            }
        }
        id
    }

    /// The first type of `kind` named `name` (with members, for a struct).
    fn named(&self, kind: Kind, name: &str) -> Option<u32> {
        self.all_named(kind, &[name])[0]
    }

    /// For each of `names`, the first type of `kind` so named: one pass over the types.
    fn all_named(&self, kind: Kind, names: &[&str]) -> Vec<Option<u32>> {
        let mut found = vec![None; names.len()];
        let mut left = names.len();
        for id in 1..self.starts.len() as u32 {
            let Some(head) = self.head(id) else { continue };
            if head.kind != Some(kind) || (kind == Kind::Struct && head.vlen == 0) {
                continue;
            }
            let name = self.name(head.name_off);
            for (i, want) in names.iter().enumerate() {
                if found[i].is_none() && name == want.as_bytes() {
                    found[i] = Some(id);
                    left -= 1;
                }
            }
            if left == 0 {
                break;
            }
        }
        found
    }

    /// The byte offset of a path of members (`"ns.inum"`: `inum` of the member `ns`) in the
    /// struct of type `id`.
    fn offset(&self, id: u32, path: &str) -> Option<u32> {
        let (mut id, mut bits) = (id, 0);
        for m in path.split('.') {
            let member = self.find(id, m.as_bytes(), 0)?;
            bits += member.bit_offset;
            id = self.resolve(member.type_id);
        }
        Some(bits / 8)
    }

    /// `member` of the struct of type `id`, looked for in its anonymous structs and unions too,
    /// its offset counted from `base`.
    fn find(&self, id: u32, member: &[u8], base: u32) -> Option<Member> {
        let head = self.head(id)?;
        let first = self.starts[id as usize] as usize + size_of::<BtfType>();
        for m in 0..head.vlen {
            let rec = first + m * size_of::<BtfMember>();
            let name = self.u32_at(rec + offset_of!(BtfMember, name_off));
            let type_id = self.u32_at(rec + offset_of!(BtfMember, type_id));
            let offset = self.u32_at(rec + offset_of!(BtfMember, offset));
            let bits = if head.kind_flag { offset & MEMBER_BIT_OFFSET } else { offset };
            if self.name(name) == member {
                return Some(Member { bit_offset: base + bits, type_id });
            }
            let inner = self.resolve(type_id);
            let anonymous = name == 0
                && matches!(
                    self.head(inner),
                    Some(Head { kind: Some(Kind::Struct | Kind::Union), .. })
                );
            if anonymous {
                if let Some(found) = self.find(inner, member, base + bits) {
                    return Some(found);
                }
            }
        }
        None
    }

    /// The id of the typedef `name` (a BTF tracepoint's `btf_trace_*`).
    pub(crate) fn typedef(&self, name: &str) -> Option<u32> {
        self.named(Kind::Typedef, name)
    }

    /// The type id of function `name`.
    pub(crate) fn func(&self, name: &str) -> Option<u32> {
        self.named(Kind::Func, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_records_are_the_uapi_ones() {
        // include/uapi/linux/btf.h: a 24-byte header, 12-byte type heads and members.
        assert_eq!(size_of::<Header>(), 24);
        let header = [
            offset_of!(Header, magic),
            offset_of!(Header, version),
            offset_of!(Header, flags),
            offset_of!(Header, hdr_len),
            offset_of!(Header, type_off),
            offset_of!(Header, type_len),
            offset_of!(Header, str_off),
            offset_of!(Header, str_len),
        ];
        assert_eq!(header, [0, 2, 3, 4, 8, 12, 16, 20]);
        assert_eq!(size_of::<BtfType>(), 12);
        let head = [
            offset_of!(BtfType, name_off),
            offset_of!(BtfType, info),
            offset_of!(BtfType, size_or_type),
        ];
        assert_eq!(head, [0, 4, 8]);
        assert_eq!(size_of::<BtfMember>(), 12);
        let member = [
            offset_of!(BtfMember, name_off),
            offset_of!(BtfMember, type_id),
            offset_of!(BtfMember, offset),
        ];
        assert_eq!(member, [0, 4, 8]);
        assert_eq!((Kind::Struct as u32, Kind::Typedef as u32, Kind::Enum64 as u32), (4, 8, 19));
        assert!(Kind::ALL.iter().enumerate().all(|(i, k)| *k as usize == i + 1));
    }

    /// A blob of four types: `int`, `struct inner { int a; int b:4, c:4; }` (kind flag: the
    /// bitfields' sizes in the members' offsets), `typedef const struct inner alias` (through
    /// a const), and `struct outer { int x; union { alias in; }; }` (an anonymous union).
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0c\0alias\0outer\0x\0in\0";
        let at = |s: &str| {
            let mut key = vec![0u8];
            key.extend_from_slice(s.as_bytes());
            key.push(0);
            strings.windows(key.len()).position(|w| w == key.as_slice()).unwrap() as u32 + 1
        };
        let info =
            |kind: Kind, vlen: u32, flag: bool| (kind as u32) << 24 | vlen | u32::from(flag) << 31;
        let mut types: Vec<u32> = Vec::new();
        // 1: int (4 bytes, 32 bits)
        types.extend([at("int"), info(Kind::Int, 0, false), 4, 32]);
        // 2: struct inner, with bitfields
        types.extend([at("inner"), info(Kind::Struct, 3, true), 8]);
        types.extend([at("a"), 1, 0, at("b"), 1, 4 << 24 | 32, at("c"), 1, 4 << 24 | 36]);
        // 3: const struct inner; 4: typedef alias
        types.extend([0, info(Kind::Const, 0, false), 2]);
        types.extend([at("alias"), info(Kind::Typedef, 0, false), 3]);
        // 5: the anonymous union { alias in; } at byte 8 of 6: struct outer
        types.extend([0, info(Kind::Union, 1, false), 8, at("in"), 4, 0]);
        types.extend([at("outer"), info(Kind::Struct, 2, false), 16, at("x"), 1, 0, 0, 5, 64]);
        let types: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for w in [24, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            b.extend(w.to_le_bytes());
        }
        b.extend(types);
        b.extend(strings);
        b
    }

    #[test]
    fn finds_members_through_typedefs_modifiers_anonymous_unions_and_bitfields() {
        let b = blob();
        let btf = Btf::parse(&b).unwrap();
        assert_eq!(btf.starts.len(), 7, "six types and void");
        let outer = btf.named(Kind::Struct, "outer").unwrap();
        assert_eq!(btf.offset(outer, "x"), Some(0));
        assert_eq!(btf.offset(outer, "in.c"), Some(12), "byte 8, then bit 36 of inner");
        assert_eq!(btf.offset(outer, "in.b"), Some(12));
        assert_eq!(btf.offset(outer, "in.a"), Some(8));
        assert_eq!(btf.offset(outer, "y"), None);
        assert_eq!(btf.typedef("alias"), Some(4));
        assert_eq!(btf.func("alias"), None);
        let head = btf.head(2).unwrap();
        let want = Head {
            kind: Some(Kind::Struct),
            name_off: 5,
            size_or_type: 8,
            vlen: 3,
            kind_flag: true,
        };
        assert_eq!(head, want);
        assert_eq!(btf.head(0), None, "void has no record");
        let names = ["outer", "inner"];
        let fields = Fields::of(&btf, &names);
        assert_eq!((fields.at("outer", "in.a"), fields.at("inner", "c")), (Some(8), Some(4)));
    }

    #[test]
    fn the_mapped_btf_reads_as_the_file_does() {
        let read = match std::fs::read(KERNEL_BTF) {
            Ok(read) => read,
            Err(e) => return crate::bpf::sys::missing("the kernel's BTF", e),
        };
        let blob = Blob::of(KERNEL_BTF).unwrap();
        assert!(blob.bytes() == read.as_slice(), "the blob is the file, byte for byte");
        let btf = Btf::parse(blob.bytes()).expect("the kernel's BTF parses");
        let names = ["task_struct", "file", "inode"];
        let fields = Fields::of(&btf, &names);
        assert!(fields.at("task_struct", "tgid").is_some_and(|at| at > 0));
        assert_eq!(fields.at("inode", "i_mode"), Some(0), "the first member of struct inode");
    }
}

//! The text of [`super::reads::generate`]'s messages, and the searches
//! [`super::search`] runs on it: chat sentences in English (60% of them),
//! Chinese (15%), Japanese (15%) and Korean (10%), built from templates and
//! vocabularies so that words vary from sentence to sentence, and a fixed
//! mix of queries over them.
//!
//! Each generated TEXT message is one [`Corpus`] sentence, chosen by
//! [`pick`] from the message's row number (PostgreSQL computes the same
//! choice, [`pick_sql`]), and one in four also ends with a reference number
//! (" #4821", one of 9,000) so that some queries find only a few messages.
//! The words of every sentence are tokenized here, in Rust, by the
//! tokenizer history uses ([`pg_document`]); a reference is one word, whose
//! document the SQL writes as `pg_document` does ([`reference_document`]).
//! The database only puts a message's two documents together (`tsvector ||
//! tsvector`), which shifts the reference's positions past the sentence's
//! exactly as tokenizing the whole body would.

use confab_core::search::{self, Term};
use confab_history::store::search::pg_document;
use std::collections::HashMap;

/// Sentences in a corpus: 144 English, 36 Chinese, 36 Japanese, 24 Korean.
pub const SENTENCES: usize = 240;
/// The first reference number.
pub const FIRST_REF: u32 = 1000;
/// Reference numbers (`FIRST_REF ..FIRST_REF + REFS`).
pub const REFS: u32 = 9000;
/// One message in `REF_EVERY` carries a reference number.
pub const REF_EVERY: u64 = 4;

/// The languages of the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// 60% of the sentences.
    English,
    /// 15%.
    Chinese,
    /// 15%.
    Japanese,
    /// 10%.
    Korean,
}

/// The language of sentence `i`: in every 20 sentences, 12 English, 3
/// Chinese, 3 Japanese, 2 Korean.
pub fn language(i: usize) -> Language {
    match i % 20 {
        0..=11 => Language::English,
        12..=14 => Language::Chinese,
        15..=17 => Language::Japanese,
        _ => Language::Korean,
    }
}

/// A language's clause templates (`{slot}` marks a word from
/// [`Grammar::words`]) and how its clauses are joined.
struct Grammar {
    /// Clause templates.
    clauses: &'static [&'static str],
    /// The vocabulary of each slot.
    words: &'static [(&'static str, &'static [&'static str])],
    /// Between two clauses of one sentence.
    joiner: &'static str,
}

/// English chat: plans, documents, travel, lost things.
const ENGLISH: Grammar = Grammar {
    clauses: &[
        "Can we move the {topic} review to {day}?",
        "{name} is still waiting on the {doc} from {team}.",
        "I pushed a fix for the {topic} bug, please take a look.",
        "The {doc} for {place} is due on {day}.",
        "Lunch in {place} at {time}, anyone?",
        "Has anyone seen my {thing}? I left it near the {team} desks.",
        "Thanks {name}, the {topic} numbers look great.",
        "The {team} sync moved to {time} on {day}.",
        "Reminder: {topic} planning starts at {time}.",
        "I am out on {day}, ask {name} if the {topic} build breaks.",
        "My flight to {place} lands at {time}.",
        "Just got back from {place} with a new {thing}.",
        "Who owns the {topic} dashboard now that {name} moved to {team}?",
        "Please read the {doc} before the {team} meeting.",
        "Sorry, running late, the train from {place} is stuck.",
        "We hit the {topic} limit again, should we raise it?",
        "Can someone bring a {thing} to the offsite on {day}?",
        "{name} shared the {topic} {doc}, comments welcome.",
    ],
    words: &[
        (
            "topic",
            &[
                "budget",
                "design",
                "release",
                "onboarding",
                "billing",
                "search",
                "payments",
                "login",
                "analytics",
                "security",
                "mobile",
                "database",
                "pricing",
                "hiring",
                "marketing",
                "support",
                "backup",
                "checkout",
                "newsletter",
                "migration",
            ],
        ),
        (
            "day",
            &[
                "Monday",
                "Tuesday",
                "Wednesday",
                "Thursday",
                "Friday",
                "Saturday",
                "Sunday",
            ],
        ),
        (
            "name",
            &[
                "Alice", "Bob", "Priya", "Kenji", "Minjun", "Wei", "Carlos", "Fatima", "Olga",
                "Tom", "Sara", "Diego", "Hana", "Omar", "Lucy", "Ravi",
            ],
        ),
        (
            "doc",
            &[
                "report",
                "invoice",
                "contract",
                "deck",
                "proposal",
                "spreadsheet",
                "roadmap",
                "estimate",
                "postmortem",
                "checklist",
            ],
        ),
        (
            "team",
            &[
                "sales", "platform", "finance", "legal", "infra", "growth", "research", "ops",
            ],
        ),
        (
            "place",
            &[
                "Tokyo", "Seoul", "Berlin", "Paris", "Lisbon", "Toronto", "Nairobi", "Austin",
                "Shanghai", "Osaka", "Busan", "Madrid", "Dublin", "Sydney",
            ],
        ),
        (
            "time",
            &["9am", "10:30", "noon", "2pm", "3:15", "4pm", "5:30", "6pm"],
        ),
        (
            "thing",
            &[
                "umbrella",
                "charger",
                "croissant",
                "projector",
                "tripod",
                "saxophone",
                "whiteboard",
                "stapler",
                "headset",
                "passport",
                "thermos",
                "lanyard",
                "keyboard",
                "doughnut",
                "bicycle",
                "cactus",
                "printer",
                "toaster",
                "kettle",
                "notebook",
                "backpack",
                "lamp",
                "jacket",
                "scarf",
                "camera",
                "drone",
                "guitar",
                "violin",
                "trophy",
                "poster",
                "balloon",
                "cupcake",
                "pizza",
                "sandwich",
                "hammock",
                "telescope",
                "microphone",
                "skateboard",
                "lantern",
                "compass",
            ],
        ),
    ],
    joiner: " ",
};

/// Chinese (simplified), the same kinds of message.
const CHINESE: Grammar = Grammar {
    clauses: &[
        "我们{day}在{place}开会，别忘了带{doc}。",
        "{name}还在等{team}的{doc}。",
        "能把{topic}评审改到{day}吗？",
        "{topic}的问题已经修好了，请大家看一下。",
        "我刚从{place}回来，天气特别好。",
        "飞机{time}到{place}，谁能来接我？",
        "{day}我请假，有急事请找{name}。",
        "谢谢{name}，{topic}的数据看起来很棒。",
        "服务器又出故障了，{team}正在处理。",
        "有人看到我的{thing}吗？好像落在会议室了。",
        "{team}的周会改到{time}了。",
        "请在{day}之前把{doc}发给我。",
    ],
    words: &[
        (
            "day",
            &["周一", "周二", "周三", "周四", "周五", "明天", "后天"],
        ),
        (
            "place",
            &[
                "东京", "上海", "北京", "首尔", "大阪", "深圳", "杭州", "广州", "巴黎", "柏林",
            ],
        ),
        (
            "doc",
            &["资料", "合同", "发票", "报告", "方案", "预算表", "会议纪要"],
        ),
        (
            "name",
            &[
                "小王", "李明", "张伟", "刘洋", "陈静", "王芳", "赵磊", "孙丽",
            ],
        ),
        (
            "team",
            &["财务部", "市场部", "技术部", "销售部", "法务部", "运维组"],
        ),
        (
            "topic",
            &[
                "预算", "设计", "发布", "支付", "登录", "搜索", "安全", "招聘",
            ],
        ),
        (
            "time",
            &["九点", "十点半", "中午", "下午三点", "四点", "晚上六点"],
        ),
        (
            "thing",
            &[
                "雨伞",
                "充电器",
                "钥匙",
                "耳机",
                "水杯",
                "笔记本",
                "眼镜",
                "外套",
                "相机",
                "工牌",
            ],
        ),
    ],
    joiner: "",
};

/// Japanese, the same kinds of message (and pets).
const JAPANESE: Grammar = Grammar {
    clauses: &[
        "{day}の会議は{place}駅の近くで行います。",
        "{name}さんが{doc}を待っています。",
        "{topic}のレビューを{day}に延期できますか？",
        "{place}から戻りました、天気が最高でした。",
        "{topic}のバグを修正したので確認してください。",
        "すみません、電車が遅れていて{time}に着きます。",
        "{doc}はどこにありますか？共有フォルダにありません。",
        "{day}は休みます、何かあれば{name}さんに連絡してください。",
        "{thing}を会議室に忘れてしまいました。",
        "ランチは{place}で{time}からどうですか？",
        "{team}の定例は{time}に変更になりました。",
        "うちの{pet}の写真を送ります、かわいいでしょう。",
    ],
    words: &[
        (
            "day",
            &[
                "月曜日",
                "火曜日",
                "水曜日",
                "木曜日",
                "金曜日",
                "明日",
                "来週",
            ],
        ),
        (
            "place",
            &[
                "東京",
                "大阪",
                "京都",
                "名古屋",
                "札幌",
                "福岡",
                "横浜",
                "神戸",
                "品川",
                "新宿",
            ],
        ),
        (
            "name",
            &[
                "田中", "佐藤", "鈴木", "高橋", "山本", "中村", "小林", "加藤",
            ],
        ),
        (
            "doc",
            &[
                "資料",
                "契約書",
                "請求書",
                "報告書",
                "企画書",
                "見積書",
                "議事録",
            ],
        ),
        (
            "topic",
            &[
                "予算",
                "設計",
                "リリース",
                "決済",
                "ログイン",
                "検索",
                "セキュリティ",
                "採用",
            ],
        ),
        ("time", &["九時", "十時半", "正午", "三時", "四時", "六時"]),
        ("team", &["営業部", "経理部", "開発部", "人事部", "法務部"]),
        (
            "thing",
            &[
                "傘",
                "充電器",
                "鍵",
                "イヤホン",
                "水筒",
                "ノートパソコン",
                "眼鏡",
                "上着",
                "カメラ",
                "社員証",
            ],
        ),
        ("pet", &["猫", "犬", "うさぎ", "ハムスター", "インコ"]),
    ],
    joiner: "",
};

/// Korean, the same kinds of message.
const KOREAN: Grammar = Grammar {
    clauses: &[
        "{day} {place}에서 회의가 있습니다.",
        "{name} 씨가 {doc} 검토를 기다리고 있어요.",
        "{day} {topic} 리뷰를 미뤄도 될까요?",
        "방금 {place}에서 돌아왔어요, 날씨가 정말 좋았어요.",
        "{topic} 버그를 고쳤으니 확인 부탁드립니다.",
        "죄송해요, 지하철이 늦어서 {time}에 도착해요.",
        "{doc} 어디 있는지 아시는 분? 공유 폴더에 없어요.",
        "{day}에는 휴가라서 급한 일은 {name} 씨에게 연락해 주세요.",
        "{thing} 회의실에 두고 왔어요.",
        "점심은 {place}에서 {time} 어때요?",
    ],
    words: &[
        (
            "day",
            &["월요일", "화요일", "수요일", "목요일", "금요일", "내일"],
        ),
        (
            "place",
            &[
                "서울", "부산", "인천", "대구", "제주", "판교", "강남", "도쿄",
            ],
        ),
        (
            "name",
            &[
                "민준", "서연", "지훈", "하은", "도윤", "수빈", "예준", "지우",
            ],
        ),
        ("doc", &["보고서", "계약서", "견적서", "기획안", "회의록"]),
        (
            "topic",
            &[
                "예산",
                "디자인",
                "출시",
                "결제",
                "로그인",
                "검색",
                "보안",
                "채용",
            ],
        ),
        ("time", &["아홉 시", "열 시 반", "정오", "세 시", "여섯 시"]),
        (
            "thing",
            &[
                "우산",
                "충전기",
                "열쇠",
                "이어폰",
                "텀블러",
                "노트북",
                "안경",
                "사원증",
            ],
        ),
    ],
    joiner: " ",
};

impl Language {
    /// How its sentences are built.
    fn grammar(self) -> &'static Grammar {
        match self {
            Language::English => &ENGLISH,
            Language::Chinese => &CHINESE,
            Language::Japanese => &JAPANESE,
            Language::Korean => &KOREAN,
        }
    }
}

/// splitmix64: the slot words and clauses of a sentence, from its number.
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Clause template `t` of `grammar` with each slot filled by a word chosen
/// from `seed` and the slot's place in the clause.
fn clause(grammar: &Grammar, t: usize, seed: u64) -> String {
    let mut out = String::new();
    let mut rest = grammar.clauses[t];
    let mut slot = 0u64;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').unwrap_or(rest.len() - open);
        let name = &rest[open + 1..close];
        let words = grammar
            .words
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&[][..], |(_, w)| *w);
        if !words.is_empty() {
            let at = splitmix(seed ^ (slot << 48)) % words.len() as u64;
            out.push_str(words[at as usize]);
        }
        slot += 1;
        rest = rest.get(close + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// Sentence `i` of a corpus whose sentences are about `target` bytes:
/// clauses of its language, the `k`th sentence of the language starting
/// at template `k` (so every template is used), joined while another
/// clause brings the length nearer `target`; its words are chosen by `i`
/// and `salt`.
pub fn sentence(i: usize, target: usize, salt: u64) -> String {
    let lang = language(i);
    let grammar = lang.grammar();
    // The how-manieth sentence of its language this is.
    let k = (0..i).filter(|&j| language(j) == lang).count();
    let n = grammar.clauses.len();
    let seed = (i as u64) << 16 | salt << 8;
    let mut text = clause(grammar, k % n, splitmix(seed));
    for c in 1..8u64 {
        let t = (k + 7 * c as usize + k / n) % n;
        let next = clause(grammar, t, splitmix(seed | c));
        let longer = text.len() + grammar.joiner.len() + next.len();
        if longer.abs_diff(target) >= text.len().abs_diff(target) {
            break;
        }
        text.push_str(grammar.joiner);
        text.push_str(&next);
    }
    text
}

/// The text reference number `n` adds to a message (`" #4821"`).
pub fn reference(n: u32) -> String {
    format!(" #{n}")
}

/// [`pg_document`] of [`reference`]`(n)`: one word at position 1.
pub fn reference_document(n: u32) -> String {
    format!("'@{n}':1")
}

/// [`reference`] and [`reference_document`] in SQL, of the `bigint`
/// expression `n` (NULL when `n` is).
pub fn reference_sql(n: &str) -> (String, String) {
    (
        format!("(' #' || {n})"),
        format!("('''@' || {n} || ''':1')"),
    )
}

/// What a generated TEXT message says: a sentence, and maybe a reference
/// number after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pick {
    /// Index of the sentence.
    pub sentence: u32,
    /// The reference number, if any.
    pub reference: Option<u32>,
}

/// The modulus of [`mix`]'s two rounds of multiply-mod-prime (each
/// followed by an xor-shift): the largest prime below 2^32, so `bigint`
/// arithmetic cannot overflow for row numbers below 2^31.
const PRIME: u64 = 4_294_967_291;
/// The first round's multiplier (Knuth's 2^32 / golden ratio).
const MUL1: u64 = 2_654_435_761;
/// The second round's (below 2^31: its products with numbers below 2^32
/// fit in a `bigint`).
const MUL2: u64 = 1_597_334_677;

/// A well-spread number below 2^32 from row number `g` (below 2^31);
/// [`mix_sql`] is the same in SQL.
pub fn mix(g: u64) -> u64 {
    let x = (g * MUL1) % PRIME;
    let x = x ^ (x >> 15);
    let x = (x * MUL2) % PRIME;
    x ^ (x >> 13)
}

/// [`mix`] of the SQL `bigint` expression `g`.
pub fn mix_sql(g: &str) -> String {
    let x1 = format!("(({g} * {MUL1}) % {PRIME})");
    let x2 = format!("({x1} # ({x1} >> 15))");
    let x3 = format!("(({x2} * {MUL2}) % {PRIME})");
    format!("({x3} # ({x3} >> 13))")
}

/// What row `g` of a corpus of `sentences` says: sentence `x % sentences`
/// and, one time in [`REF_EVERY`], a reference number, from `x =
/// mix(g)`; [`pick_sql`] is the same in SQL.
pub fn pick(g: u64, sentences: usize) -> Pick {
    let (x, n) = (mix(g), sentences as u64);
    Pick {
        sentence: (x % n) as u32,
        reference: ((x / n) % REF_EVERY == 0)
            .then(|| FIRST_REF + ((x / (n * REF_EVERY)) % u64::from(REFS)) as u32),
    }
}

/// [`pick`] in SQL, given `x` (an expression of [`mix_sql`]'s value):
/// the sentence's index from 0, and the reference number or NULL.
pub fn pick_sql(x: &str, sentences: usize) -> (String, String) {
    (
        format!("({x} % {sentences})"),
        format!(
            "CASE WHEN ({x} / {sentences}) % {REF_EVERY} = 0 \
             THEN {FIRST_REF} + ({x} / {}) % {REFS} END",
            sentences as u64 * REF_EVERY
        ),
    )
}

/// The sentences messages are made of, with their words as history
/// writes them.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// The sentences.
    pub sentences: Vec<String>,
    /// [`pg_document`] of each sentence.
    pub documents: Vec<String>,
}

impl Corpus {
    /// [`SENTENCES`] different sentences of about `target` bytes each
    /// (sentence `i` with the first salt that makes it differ from those
    /// before it).
    pub fn new(target: usize) -> Self {
        let mut sentences: Vec<String> = Vec::with_capacity(SENTENCES);
        for i in 0..SENTENCES {
            let mut salt = 0;
            let mut s = sentence(i, target, salt);
            while sentences.contains(&s) && salt < 255 {
                salt += 1;
                s = sentence(i, target, salt);
            }
            sentences.push(s);
        }
        Self {
            documents: sentences.iter().map(|s| pg_document(s)).collect(),
            sentences,
        }
    }

    /// The body of a message that says `p`.
    pub fn body(&self, p: Pick) -> String {
        let mut body = self.sentences[p.sentence as usize].clone();
        if let Some(n) = p.reference {
            body.push_str(&reference(n));
        }
        body
    }

    /// Bytes of the body of a message that says `p`.
    pub fn body_len(&self, p: Pick) -> usize {
        self.sentences[p.sentence as usize].len() + p.reference.map_or(0, |n| reference(n).len())
    }

    /// What `terms` (1 to 64 of them; `None` otherwise) match in this
    /// corpus. A message's words are its sentence's, then its
    /// reference's, and no term matches across the two (a phrase is CJK,
    /// the reference digits), so a message matches when each term matches
    /// one of its two parts.
    pub fn matcher<'a>(&'a self, terms: &'a [Term]) -> Option<Matcher<'a>> {
        if terms.is_empty() || terms.len() > 64 {
            return None;
        }
        let all = u64::MAX >> (64 - terms.len());
        let mut m = Matcher {
            terms,
            all,
            sentences: Vec::new(),
            references: HashMap::new(),
        };
        m.sentences = self.sentences.iter().map(|s| m.mask(s)).collect();
        Some(m)
    }
}

/// Which messages of a [`Corpus`] a query matches ([`Corpus::matcher`]).
#[derive(Debug, Clone)]
pub struct Matcher<'a> {
    terms: &'a [Term],
    /// Every term's bit.
    all: u64,
    /// The terms each sentence matches, a bit each.
    sentences: Vec<u64>,
    /// The terms each reference matches, as far as asked.
    references: HashMap<u32, u64>,
}

impl Matcher<'_> {
    /// The terms `text` matches, a bit each.
    fn mask(&self, text: &str) -> u64 {
        self.terms
            .iter()
            .enumerate()
            .filter(|(_, t)| search::matches(text, std::slice::from_ref(*t)))
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// Whether the message that says `p` matches every term.
    pub fn matches(&mut self, p: Pick) -> bool {
        let sentence = self.sentences[p.sentence as usize];
        let reference = match p.reference {
            None => 0,
            Some(n) => match self.references.get(&n) {
                Some(m) => *m,
                None => {
                    let m = self.mask(&reference(n));
                    self.references.insert(n, m);
                    m
                }
            },
        };
        sentence | reference == self.all
    }

    /// How many of the messages counted in `scope` match every term.
    pub fn count(&mut self, scope: &Scope) -> u64 {
        let mut found = 0;
        for (s, n) in scope.plain.iter().enumerate() {
            if self.sentences[s] == self.all {
                found += n;
            }
        }
        for (p, n) in &scope.with_reference {
            if self.matches(*p) {
                found += n;
            }
        }
        found
    }
}

/// How many messages say each [`Pick`], for [`Matcher::count`].
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Messages of each sentence without a reference.
    plain: Vec<u64>,
    /// Messages of each sentence and reference.
    with_reference: HashMap<Pick, u64>,
    /// Messages counted.
    pub messages: u64,
}

impl Scope {
    /// Counts one message that says `p`.
    pub fn add(&mut self, p: Pick) {
        self.messages += 1;
        if p.reference.is_some() {
            *self.with_reference.entry(p).or_insert(0) += 1;
        } else {
            let s = p.sentence as usize;
            if self.plain.len() <= s {
                self.plain.resize(s + 1, 0);
            }
            self.plain[s] += 1;
        }
    }
}

/// The kinds of search [`QUERIES`] mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QueryClass {
    /// An English word in many messages (a topic, a place, a day).
    FrequentWord,
    /// An English word in one sentence or two.
    RareWord,
    /// Two English words, both in the messages found.
    TwoWords,
    /// A reference number (one message in 36,000 has each).
    Reference,
    /// One Chinese or Japanese character (any word that holds it).
    Cjk1,
    /// Two CJK characters (a word inside a run).
    Cjk2,
    /// Three CJK characters.
    Cjk3,
    /// Words no message has.
    NoMatch,
}

impl QueryClass {
    /// For tables.
    pub fn label(self) -> &'static str {
        match self {
            QueryClass::FrequentWord => "frequent word",
            QueryClass::RareWord => "rare word",
            QueryClass::TwoWords => "two words",
            QueryClass::Reference => "reference number",
            QueryClass::Cjk1 => "CJK, 1 character",
            QueryClass::Cjk2 => "CJK, 2 characters",
            QueryClass::Cjk3 => "CJK, 3 characters",
            QueryClass::NoMatch => "no match",
        }
    }
}

/// The searches, run in turn, over and over: three or four of each kind.
/// Frequent words are in 2–5% of the messages, rare ones in one sentence
/// (0.4%), reference numbers in 1 message in 36,000 (see the tests); a
/// query that matches a sentence finds messages on any table big enough
/// to hold it.
pub const QUERIES: &[(QueryClass, &str)] = &[
    (QueryClass::FrequentWord, "budget"),
    (QueryClass::Cjk2, "东京"),
    (QueryClass::RareWord, "lantern"),
    (QueryClass::Reference, "#4821"),
    (QueryClass::TwoWords, "Priya postmortem"),
    (QueryClass::Cjk1, "猫"),
    (QueryClass::Cjk3, "東京駅"),
    (QueryClass::FrequentWord, "Tokyo"),
    (QueryClass::Cjk2, "会議"),
    (QueryClass::RareWord, "passport"),
    (QueryClass::NoMatch, "kubernetes"),
    (QueryClass::TwoWords, "Kenji estimate"),
    (QueryClass::Cjk1, "王"),
    (QueryClass::Cjk3, "财务部"),
    (QueryClass::Reference, "1307"),
    (QueryClass::FrequentWord, "Bob"),
    (QueryClass::Cjk2, "서울"),
    (QueryClass::RareWord, "compass"),
    (QueryClass::TwoWords, "Minjun invoice"),
    (QueryClass::Cjk1, "鍵"),
    (QueryClass::Cjk3, "계약서"),
    (QueryClass::Cjk2, "预算"),
    (QueryClass::Reference, "7777"),
    (QueryClass::NoMatch, "大阪城"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pick of rows `0..rows`, counted.
    fn scope_of(rows: u64) -> Scope {
        let mut scope = Scope::default();
        for g in 0..rows {
            scope.add(pick(g, SENTENCES));
        }
        scope
    }

    #[test]
    fn the_languages_are_mixed_as_asked_and_every_sentence_differs() {
        let c = Corpus::new(100);
        assert_eq!(c.sentences.len(), SENTENCES);
        let count = |l: Language| (0..SENTENCES).filter(|&i| language(i) == l).count();
        assert_eq!(
            [
                count(Language::English),
                count(Language::Chinese),
                count(Language::Japanese),
                count(Language::Korean)
            ],
            [144, 36, 36, 24]
        );
        let mut distinct = c.sentences.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), SENTENCES, "no sentence twice");
        for (s, doc) in c.sentences.iter().zip(&c.documents) {
            assert!(!s.contains('{') && !s.contains('}'), "{s}");
            assert!(search::tokens(s).len() >= 4, "{s}");
            assert!(!doc.is_empty());
        }
        // Each language is written in its own script.
        let cjk = |s: &str| s.chars().filter(|c| search::is_cjk(*c)).count();
        for (i, s) in c.sentences.iter().enumerate() {
            match language(i) {
                Language::English => assert_eq!(cjk(s), 0, "{s}"),
                _ => assert!(cjk(s) * 2 > s.chars().count(), "{s}"),
            }
        }
    }

    #[test]
    fn bodies_are_about_the_bytes_asked_for() {
        for target in [100, 200] {
            let c = Corpus::new(target);
            let scope_rows = 100_000u64;
            let total: usize = (0..scope_rows)
                .map(|g| c.body_len(pick(g, SENTENCES)))
                .sum();
            let mean = total as f64 / scope_rows as f64;
            assert!(
                (mean - target as f64).abs() <= target as f64 * 0.15,
                "mean {mean:.1} bytes for {target}"
            );
        }
    }

    #[test]
    fn rows_pick_every_sentence_about_as_often_and_a_quarter_a_reference() {
        let rows = 240_000u64;
        let mut per_sentence = vec![0u64; SENTENCES];
        let mut refs = std::collections::HashSet::new();
        let mut with_ref = 0;
        for g in 0..rows {
            let p = pick(g, SENTENCES);
            per_sentence[p.sentence as usize] += 1;
            if let Some(n) = p.reference {
                assert!((FIRST_REF..FIRST_REF + REFS).contains(&n));
                refs.insert(n);
                with_ref += 1;
            }
        }
        let mean = rows / SENTENCES as u64;
        assert!(
            per_sentence
                .iter()
                .all(|&n| n > mean * 8 / 10 && n < mean * 12 / 10),
            "{per_sentence:?}"
        );
        assert!(
            (with_ref as f64 / rows as f64 - 0.25).abs() < 0.01,
            "{with_ref}"
        );
        assert!(refs.len() > (REFS as usize) * 9 / 10, "{}", refs.len());
        // Below 2^31 rows, nothing overflows a bigint in mix_sql: a row
        // number times MUL1, then a number below 2^32 times MUL2.
        assert!((1u64 << 31) * MUL1 < i64::MAX as u64);
        assert!((1u64 << 32) * MUL2 < i64::MAX as u64);
    }

    #[test]
    fn the_sql_is_the_rust() {
        // The shape only: the suite checks a sample of generated rows
        // against Corpus::body, which runs this in PostgreSQL.
        let x = mix_sql("g");
        assert!(x.contains("2654435761") && x.contains("# (") && x.contains(">> 13"));
        let (s, r) = pick_sql("x", 240);
        assert_eq!(s, "(x % 240)");
        assert_eq!(
            r,
            "CASE WHEN (x / 240) % 4 = 0 THEN 1000 + (x / 960) % 9000 END"
        );
        assert_eq!(mix(0), 0);
        assert_ne!(mix(1), mix(2));
    }

    #[test]
    fn a_message_matches_when_each_term_matches_its_sentence_or_its_reference() {
        let c = Corpus::new(100);
        let terms: Vec<Vec<Term>> = QUERIES.iter().map(|(_, q)| search::terms(q)).collect();
        let mut matchers: Vec<(&Vec<Term>, Matcher)> = terms
            .iter()
            .map(|t| (t, c.matcher(t).expect("1 to 64 terms")))
            .collect();
        for g in 0..3_000u64 {
            let p = pick(g, SENTENCES);
            let body = c.body(p);
            // A body's words are the sentence's, then the reference's.
            let mut words: Vec<String> = search::tokens(&c.sentences[p.sentence as usize])
                .into_iter()
                .map(|t| t.text)
                .collect();
            if let Some(n) = p.reference {
                words.push(n.to_string());
            }
            let got: Vec<String> = search::tokens(&body).into_iter().map(|t| t.text).collect();
            assert_eq!(got, words, "{body}");
            for ((_, q), (terms, m)) in QUERIES.iter().zip(matchers.iter_mut()) {
                assert_eq!(
                    m.matches(p),
                    search::matches(&body, terms),
                    "{q:?} in {body:?}"
                );
            }
        }
    }

    #[test]
    fn every_query_finds_what_its_class_says() {
        let c = Corpus::new(100);
        let rows = 1_000_000u64;
        let scope = scope_of(rows);
        let share = |q: &str| {
            let terms = search::terms(q);
            c.matcher(&terms)
                .map(|mut m| m.count(&scope) as f64 / rows as f64)
        };
        let sentences_with = |q: &str| {
            let terms = search::terms(q);
            c.sentences
                .iter()
                .filter(|s| search::matches(s, &terms))
                .count()
        };
        for (class, q) in QUERIES {
            let terms = search::terms(q);
            assert!(!terms.is_empty(), "{q}");
            let s = share(q).unwrap_or(-1.0);
            let n = sentences_with(q);
            let ok = match class {
                QueryClass::FrequentWord => (0.02..=0.05).contains(&s),
                QueryClass::RareWord => n == 1 && s < 0.01,
                QueryClass::TwoWords => n >= 1 && s < 0.02,
                QueryClass::Reference => n == 0 && s > 0.0 && s < 0.0001,
                QueryClass::Cjk1 | QueryClass::Cjk2 | QueryClass::Cjk3 => n >= 1 && s < 0.05,
                QueryClass::NoMatch => s == 0.0,
            };
            assert!(
                ok,
                "{class:?} {q:?}: {n} sentences, {:.3}% of rows",
                s * 100.0
            );
            let cjk = q.chars().filter(|c| search::is_cjk(*c)).count();
            match class {
                QueryClass::Cjk1 => assert_eq!(cjk, 1, "{q}"),
                QueryClass::Cjk2 => assert_eq!(cjk, 2, "{q}"),
                QueryClass::Cjk3 => assert_eq!(cjk, 3, "{q}"),
                _ => {}
            }
            // The suite's other writes to the table (a " (edited)" on
            // changed messages, Sync's "changed") are not found.
            for other in ["x (edited)", "changed"] {
                assert!(!search::matches(other, &terms), "{q} finds {other}");
            }
        }
        // Every class is in the mix.
        for class in [
            QueryClass::FrequentWord,
            QueryClass::RareWord,
            QueryClass::TwoWords,
            QueryClass::Reference,
            QueryClass::Cjk1,
            QueryClass::Cjk2,
            QueryClass::Cjk3,
            QueryClass::NoMatch,
        ] {
            assert!(QUERIES.iter().any(|(c, _)| *c == class), "{class:?}");
        }
    }

    #[test]
    fn a_reference_is_one_word_whose_document_the_sql_writes() {
        for n in FIRST_REF..FIRST_REF + REFS {
            assert_eq!(reference_document(n), pg_document(&reference(n)), "{n}");
        }
        assert_eq!(
            reference_sql("p.r"),
            (
                "(' #' || p.r)".to_string(),
                "('''@' || p.r || ''':1')".to_string()
            )
        );
    }

    #[test]
    fn no_sentence_holds_a_reference_number() {
        let c = Corpus::new(100);
        for s in &c.sentences {
            for t in search::tokens(s) {
                let n: Option<u32> = t.text.parse().ok();
                assert!(
                    n.is_none_or(|n| !(FIRST_REF..FIRST_REF + REFS).contains(&n)),
                    "{s}"
                );
            }
        }
    }
}
